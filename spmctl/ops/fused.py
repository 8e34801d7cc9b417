"""The membrane op: the fused C++/CUDA kernel when it loads, the PyTorch reference otherwise.

`SPMCTL_KERNEL` selects: `auto` (default: fused if it builds, else reference with one warning),
`fused` (a build failure is an error), `reference` (never build). On each device the fused op is
checked against the reference at first use, and a kernel that fails the check or cannot launch there
leaves that device to the reference (spmctl.ops.selfcheck).
"""

from __future__ import annotations

import importlib
import os
import threading
import warnings

import torch

from spmctl.errors import SpmctlError, one_line
from spmctl.ops import selfcheck
from spmctl.ops.reference import membrane_reference

__all__ = [
    "membrane",
    "membrane_",
    "linear_membrane",
    "kernel_backend",
    "load_fused",
    "fused_supports",
    "fused_forward_op",
    "MAX_CUDA_J",
]

MAX_CUDA_J = 32  # K * rank the CUDA kernels keep in registers; larger falls back to the reference

_backend: str | None = None  # "fused" | "reference", decided once per process
_reason = ""
_lock = threading.Lock()


def _op_registered() -> bool:
    try:
        torch.ops.spmctl.membrane_fwd  # noqa: B018 - attribute lookup is the check
    except (AttributeError, RuntimeError):
        return False
    return True


def _register_python_parts() -> None:
    """Fake (meta) kernels for the C++ ops, so they trace under torch.compile."""

    def out_format(x: torch.Tensor, conv: bool) -> torch.memory_format:
        # Same rule as membrane_channels_last() in csrc/membrane_common.h.
        if (
            conv
            and x.dim() == 4
            and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last)
        ):
            return torch.channels_last
        return torch.contiguous_format

    @torch.library.register_fake("spmctl::membrane_fwd")
    def _fwd_fake(x, base_out, down, up, gate, scale, conv=False):
        torch._check(x.dtype == base_out.dtype, lambda: "membrane: x and base_out dtypes differ")
        return torch.empty(
            base_out.shape, dtype=base_out.dtype, device=base_out.device, memory_format=out_format(x, conv)
        )

    @torch.library.register_fake("spmctl::membrane_bwd")
    def _bwd_fake(grad_out, x, down, up, gate, scale, conv=False):
        gx = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=out_format(x, conv))
        return (
            gx,
            torch.empty(down.shape, dtype=down.dtype, device=down.device),
            torch.empty(up.shape, dtype=up.dtype, device=up.device),
        )

    # Autograd is registered in C++ (csrc/membrane_autograd.cpp): a Python formula cost more per call
    # than the kernels at the membrane's sizes.

    @torch.library.register_fake("spmctl::membrane_fwd_")
    def _fwd_inplace_fake(out, x, down, up, gate, scale, conv=False):
        return None

    @torch.library.register_fake("spmctl::linear_membrane")
    def _linear_membrane_fake(x, weight, bias, down, up, gate, scale):
        return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _load() -> tuple[str, str]:
    mode = os.environ.get("SPMCTL_KERNEL", "auto").strip().lower()
    if mode not in ("auto", "fused", "reference"):
        raise SpmctlError(f"SPMCTL_KERNEL must be auto, fused or reference, not {mode!r}")
    if mode == "reference":
        return "reference", "SPMCTL_KERNEL=reference"
    if not _op_registered():
        try:  # the extension setup.py builds with SPMCTL_BUILD_EXT=1
            from spmctl.ops.build import PREBUILT_NAME

            importlib.import_module(PREBUILT_NAME)
        except ImportError:
            pass
    if not _op_registered():
        try:
            from spmctl.ops.build import build_and_load

            build_and_load(verbose=os.environ.get("SPMCTL_BUILD_VERBOSE") == "1")
        except Exception as exc:  # no compiler, no ninja, a compile error: all mean "no fused op"
            first = one_line(exc, limit=300, last=True)
            if mode == "fused":
                raise SpmctlError(
                    f"SPMCTL_KERNEL=fused but the membrane kernel failed to build: {first}"
                ) from exc
            return "reference", f"build failed: {first}"
    _register_python_parts()
    global _FWD
    _FWD = fused_forward_op()
    return "fused", ""


def load_fused() -> str:
    """Decide the backend once (building the kernel if needed); returns "fused" or "reference"."""
    global _backend, _reason
    if _backend is None:
        with _lock:
            if _backend is None:
                backend, reason = _load()
                _reason = reason
                if backend == "reference" and reason != "SPMCTL_KERNEL=reference":
                    warnings.warn(
                        f"spmctl: the fused membrane kernel is unavailable ({reason}); using the slower "
                        "PyTorch reference. Set SPMCTL_KERNEL=reference to choose it explicitly.",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                _backend = backend
    return _backend


def kernel_backend() -> str:
    return load_fused()


def fused_supports(x: torch.Tensor, down: torch.Tensor) -> bool:
    """Whether the loaded fused op has a kernel for this device/dtype/size."""
    if x.device.type == "cpu":
        return True
    if x.device.type == "cuda":
        if x.dtype == torch.float64 or down.shape[0] * down.shape[1] > MAX_CUDA_J:
            return False
        return torch._C._dispatch_has_kernel_for_dispatch_key("spmctl::membrane_fwd", "CUDA")
    return False


def _launch_failure(*args, **kwargs):
    """SPMCTL_TEST_FAULT=launch: what a kernel launch raises when the binary has no code for the GPU."""
    raise RuntimeError("membrane_fwd (CUDA): no kernel image is available for execution on the device")


def fused_forward_op():
    """The fused forward op (with autograd), or the simulated launch failure of the test hook."""
    return _launch_failure if selfcheck.fault_hook() == "launch" else torch.ops.spmctl.membrane_fwd


def _usable(x: torch.Tensor) -> bool:
    # torch.compile traces the op itself; the check runs in eager calls only
    return torch.compiler.is_compiling() or selfcheck.device_ok(x)


def membrane(
    x: torch.Tensor,
    base_out: torch.Tensor,
    down: torch.Tensor,
    up: torch.Tensor,
    gate: torch.Tensor,
    scale: torch.Tensor,
    conv: bool = False,
) -> torch.Tensor:
    """out = base_out + sum_k gate[b,k]*scale[k]*(x . down_k^T) . up_k^T (see spmctl.ops.reference)."""
    backend = _backend if _backend is not None else load_fused()
    if backend == "fused" and fused_supports(x, down) and _usable(x):
        try:
            return _FWD(x, base_out, down, up, gate, scale, conv)
        except RuntimeError as exc:
            if not selfcheck.launch_failed(x.device, exc):
                raise
    return membrane_reference(x, base_out, down, up, gate, scale, conv)


def membrane_(
    out: torch.Tensor,
    x: torch.Tensor,
    down: torch.Tensor,
    up: torch.Tensor,
    gate: torch.Tensor,
    scale: torch.Tensor,
    conv: bool = False,
) -> torch.Tensor:
    """In-place form for when no gradient is needed: `out` holds base_out and receives the sum.

    Returns the result, which is `out` itself where an in-place kernel exists (the CPU op) and a new
    tensor otherwise, so callers use the return value.
    """
    backend = _backend if _backend is not None else load_fused()
    if backend == "fused" and x.device.type == "cpu" and out.dtype == x.dtype and _usable(x):
        torch.ops.spmctl.membrane_fwd_.default(out, x, down, up, gate, scale, conv)
        return out
    return membrane(x, out, down, up, gate, scale, conv)


def linear_membrane(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    down: torch.Tensor,
    up: torch.Tensor,
    gate: torch.Tensor,
    scale: torch.Tensor,
) -> torch.Tensor | None:
    """F.linear(x, weight, bias) plus the membranes, in one op (no gradient; CPU float32 only).

    Returns None where the fused op does not apply, and the caller runs the layer and `membrane_`.
    Called once per adapted layer and UNet step, so the checks are the cheap ones; the op itself
    rejects a weight or bias that is not float32 (as F.linear would reject the dtype mismatch).
    """
    if (
        x.dtype is not torch.float32
        or not x.is_cpu
        or (_backend if _backend is not None else load_fused()) != "fused"
        or torch.is_autocast_enabled("cpu")  # the layer would run in the autocast dtype
        or not _usable(x)
    ):
        return None
    return _linear_membrane_op()(x, weight, bias, down, up, gate, scale)


def _linear_membrane_op():
    global _LINEAR_MEMBRANE
    if _LINEAR_MEMBRANE is None:
        _LINEAR_MEMBRANE = torch.ops.spmctl.linear_membrane.default
    return _LINEAR_MEMBRANE


_LINEAR_MEMBRANE = None
_FWD = None  # torch.ops.spmctl.membrane_fwd once loaded
