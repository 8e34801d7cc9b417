"""First use of the fused op on a device: check it against the reference, or stop using it there.

The CUDA kernels meet most GPUs for the first time on a user's machine. So the first time the fused op
is about to run on a device (per dtype) in a process, it runs once on small random inputs, forward and
backward, next to `membrane_reference`. A difference beyond the dtype's tolerance, or a kernel that
cannot launch there (a binary without code for this GPU: "no kernel image is available"), turns the
fused op off for that device for the rest of the process with one warning naming the difference; the
reference serves it from then on. It costs a few milliseconds, once, and draws from its own random
generator (a run's random stream is untouched).

`SPMCTL_SELF_CHECK=0` skips the check. Test hook, `SPMCTL_TEST_FAULT` (only ever turns the fused op
off, never changes a result):
    forward   the check sees the fused forward result off by 0.25 (a wrong kernel)
    backward  the check sees the fused x gradient off by 0.25
    launch    every fused call raises the error CUDA gives for a binary without code for the GPU
"""

from __future__ import annotations

import os
import threading
import warnings

import torch

from spmctl.ops.reference import membrane_reference

# max |fused - reference| allowed, relative to max(1, max |reference|), per dtype (the kernels accumulate in fp32
# like the reference; fp16/bf16 differ in the final rounding and in fp32 summation order)
TOLERANCE = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 3e-2, torch.float64: 1e-10}
# what a kernel launch reports when the binary cannot run on this GPU (cudaGetErrorString texts)
LAUNCH_ERRORS = (
    "no kernel image is available",
    "invalid device function",
    "unsupported toolchain",  # PTX newer than the driver
    "PTX JIT compiler",
    "device kernel image is invalid",
)
FAULTS = ("forward", "backward", "launch")

_ok: dict[tuple[torch.device, torch.dtype], bool] = {}
_disabled: dict[torch.device, str] = {}
_results: dict[str, str] = {}  # "cuda:0 float16" -> "passed" | why not (for `spmctl doctor`)
_lock = threading.Lock()


def fault_hook() -> str:
    fault = os.environ.get("SPMCTL_TEST_FAULT", "").strip().lower()
    return fault if fault in FAULTS else ""


def _device(device: torch.device) -> torch.device:
    """cuda -> cuda:N (the current device), so one GPU has one key."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def device_ok(x: torch.Tensor) -> bool:
    """Whether the fused op may run on x's device in x's dtype (checking it the first time)."""
    ok = _ok.get((x.device, x.dtype))
    return ok if ok is not None else check(x.device, x.dtype)


def results() -> dict[str, str]:
    return dict(_results)


def disable(device: torch.device, reason: str) -> None:
    """Stop using the fused op on `device` for the rest of the process, with one warning."""
    device = _device(device)
    with _lock:
        if device in _disabled:
            return
        _disabled[device] = reason
        for key in [k for k in _ok if _device(k[0]) == device]:
            _ok[key] = False
    warnings.warn(
        f"spmctl: the fused membrane kernel is not used on {device}: {reason}; the PyTorch reference "
        "computes the membranes there instead (same results, slower). `spmctl doctor` shows the details.",
        RuntimeWarning,
        stacklevel=4,
    )


def launch_failed(device: torch.device, exc: BaseException) -> bool:
    """If `exc` says the kernel cannot run on this device, turn the fused op off there; True if so."""
    message = str(exc)
    if not any(text in message for text in LAUNCH_ERRORS):
        return False
    first = next((line for line in message.splitlines() if any(t in line for t in LAUNCH_ERRORS)), message)
    disable(device, f"its kernel cannot launch there ({first.strip()[:200]})")
    _results[f"{_device(device)}"] = f"launch failed: {first.strip()[:200]}"
    return True


def check(device: torch.device, dtype: torch.dtype) -> bool:
    """Run the fused op next to the reference on `device` in `dtype` once; False turns it off there."""
    from spmctl.ops import fused

    if fused.load_fused() != "fused":
        return False  # nothing to check: the reference serves every device
    key = (device, dtype)
    name = f"{_device(device)} {str(dtype).removeprefix('torch.')}"
    with _lock:
        if key in _ok:
            return _ok[key]
        if _device(device) in _disabled:
            _ok[key] = False
            return False
        if os.environ.get("SPMCTL_SELF_CHECK", "1") == "0":
            _ok[key] = True
            _results[name] = "skipped (SPMCTL_SELF_CHECK=0)"
            return True
    try:
        problem = _compare(device, dtype)
    except RuntimeError as exc:
        if launch_failed(device, exc):
            return False
        raise
    _results[name] = problem or "passed"
    if problem:
        disable(device, f"it disagrees with the reference in {name.split()[1]}: {problem}")
        return False
    _ok[key] = True
    return True


def _compare(device: torch.device, dtype: torch.dtype) -> str:
    """'' when the fused op matches the reference, else what differs and by how much."""
    from spmctl.ops import fused

    g = torch.Generator().manual_seed(1234)
    # odd sizes, so the kernels' vector tails and a gate-0 sample are exercised; K*r = 4
    x = torch.randn(3, 7, 19, generator=g)
    base = torch.randn(3, 7, 21, generator=g)
    down, up = torch.randn(2, 2, 19, generator=g) * 0.3, torch.randn(2, 21, 2, generator=g) * 0.3
    gate, scale = torch.tensor([[0.0, 0.0], [1.0, 0.5], [0.3, 2.0]]), torch.tensor([1.0, 0.5])
    grad = torch.randn(3, 7, 21, generator=g)
    fault = fault_hook()
    outputs = []
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
        for fn in (fused.fused_forward_op(), membrane_reference):
            # activations in the dtype in use, membrane weights in fp32, as MembraneModule calls it
            leaves = [t.to(device, dtype).requires_grad_() for t in (x, base)]
            leaves += [t.to(device).requires_grad_() for t in (down, up)]
            out = fn(*leaves, gate.to(device), scale.to(device), False)
            out.backward(grad.to(device, dtype))
            outputs.append((out.detach().float().cpu(), [t.grad.float().cpu() for t in leaves]))
    (out_f, grads_f), (out_r, grads_r) = outputs
    if fault == "forward":
        out_f = out_f + 0.25
    elif fault == "backward":
        grads_f[0] = grads_f[0] + 0.25
    tol = TOLERANCE[dtype]
    for what, a, b in zip(("forward", "grad x", "grad base_out", "grad down", "grad up"),
                          [out_f, *grads_f], [out_r, *grads_r], strict=True):
        err, allowed = (a - b).abs().max().item(), tol * max(1.0, b.abs().max().item())
        if not err <= allowed:  # `not <=` catches NaN
            return f"{what} differs by {err:.3g} (allowed {allowed:.2g})"
    return ""
