"""The fused membrane op against its PyTorch reference; build, fallback and nvcc compile checks.

Op tests take the `device` fixture (tests/conftest.py): CPU always, CUDA where a GPU is (`-m cuda`).

Mutations these tests catch (each was made on purpose and seen to fail):
- membrane() never picks the fused op (its `if backend == "fused" ...` -> `if False`):
  test_dispatcher_picks_the_fused_op_where_it_applies, and the training case of
  test_fused_and_reference_agree_in_the_unet (tests/test_membrane_network.py);
- membrane_() never takes the in-place kernel: test_dispatcher_picks_the_fused_op_where_it_applies;
- the in-place op declared as returning its aliased input (`-> Tensor(a!)`, the schema before):
  test_opcheck_inplace (such an op cannot be functionalised under torch.compile);
- the UNet comparison run on the reference twice: test_fused_and_reference_agree_in_the_unet asserts
  which spmctl ops each run called;
- the launch-failure, self-check and arch-flag mutations listed in tests/test_gpu_path.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers_ops import OpLog

from spmctl.ops import membrane_reference
from spmctl.ops.build import csrc_dir, extension_sources, jit_spec

TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float64: 1e-12}


def make_case(
    layout: str, dtype: torch.dtype, k: int, r: int, seed: int = 0, batch: int = 3, small: bool = False
):
    g = torch.Generator().manual_seed(seed)
    # not multiples of the vector width, so the tails are exercised; `small` for gradcheck
    cin, cout, n, hw = (5, 6, 3, (2, 3)) if small else (37, 45, 11, (5, 7))
    if layout == "linear":
        x = torch.randn(batch, n, cin, generator=g)
        base = torch.randn(batch, n, cout, generator=g)
    else:
        x = torch.randn(batch, cin, *hw, generator=g)
        base = torch.randn(batch, cout, *hw, generator=g)
        if layout == "conv_cl":
            x = x.to(memory_format=torch.channels_last)
            base = base.to(memory_format=torch.channels_last)
    down = torch.randn(k, r, cin, generator=g) * 0.3
    up = torch.randn(k, cout, r, generator=g) * 0.3
    # sample 0: all gates 0 (must pass base through exactly); others mixed 0/1/fractional/large
    gate = torch.tensor([[0.0] * k, [1.0, 0.5, 0.0][:k], [0.37, 2.0, 1.0][:k]])[:batch]
    scale = torch.tensor([1.0, 0.5, 2.0][:k])
    return x.to(dtype), base.to(dtype), down, up, gate, scale, layout != "linear"


def on(device: torch.device, case: tuple) -> tuple:
    """A make_case tuple on `device` (memory formats kept)."""
    return tuple(t.to(device) if isinstance(t, torch.Tensor) else t for t in case)


@pytest.mark.parametrize("k,r", [(1, 1), (3, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["linear", "conv", "conv_cl"])
def test_fused_matches_reference(fused_on, device, layout, dtype, k, r):
    x, base, down, up, gate, scale, conv = on(device, make_case(layout, dtype, k, r))
    leaves = [t.clone().requires_grad_() for t in (x, base, down, up)]
    results = []
    for fn in (fused_on, membrane_reference):
        inputs = [t.detach().clone().requires_grad_() for t in leaves]
        out = fn(inputs[0], inputs[1], inputs[2], inputs[3], gate, scale, conv)
        grad = torch.linspace(-1, 1, out.numel()).reshape(out.shape).to(device, dtype)
        out.backward(grad)
        results.append((out, [t.grad for t in inputs]))
    (out_f, grads_f), (out_r, grads_r) = results
    assert out_f.dtype == dtype and out_f.shape == out_r.shape
    assert out_f.stride() == out_r.stride()  # channels-last stays channels-last
    tol = TOL[dtype]
    torch.testing.assert_close(out_f, out_r, atol=tol * 4, rtol=tol)
    assert torch.equal(out_f[0], base[0])  # gate 0 rows are base_out bit for bit
    for name, a, b in zip(("x", "base_out", "down", "up"), grads_f, grads_r, strict=True):
        scale_ = b.abs().max().item() + 1e-6
        assert (a.float() - b.float()).abs().max().item() <= tol * 8 * scale_, name
        assert a.dtype == b.dtype, name


@pytest.mark.parametrize("layout", ["linear", "conv", "conv_cl"])
def test_fused_gradcheck_fp64(fused, layout):
    x, base, down, up, gate, scale, conv = make_case(layout, torch.float64, 3, 2, small=True)
    args = [t.double().requires_grad_() for t in (x, base, down, up)]
    if layout == "conv_cl":
        assert args[0].is_contiguous(memory_format=torch.channels_last) and not args[0].is_contiguous()
    assert torch.autograd.gradcheck(lambda a, b, d, u: fused(a, b, d, u, gate, scale, conv), args)
    # the reference is slow per call (small GEMMs): fast mode checks a random projection of the Jacobian
    assert torch.autograd.gradcheck(
        lambda a, b, d, u: membrane_reference(a, b, d, u, gate, scale, conv), args, fast_mode=True
    )


def test_reference_gradcheck_fp64_full():
    x, base, down, up, gate, scale, conv = make_case("linear", torch.float64, 1, 1, small=True, batch=2)
    args = [t.double().requires_grad_() for t in (x, base, down, up)]
    assert torch.autograd.gradcheck(
        lambda a, b, d, u: membrane_reference(a, b, d, u, gate, scale, conv), args
    )


def test_opcheck(fused_on, device):
    for layout, dtype in (("linear", torch.float32), ("conv_cl", torch.float32), ("conv", torch.bfloat16)):
        x, base, down, up, gate, scale, conv = on(device, make_case(layout, dtype, 3, 2))
        args = (x, base, down.requires_grad_(), up.requires_grad_(), gate, scale, conv)
        torch.library.opcheck(torch.ops.spmctl.membrane_fwd.default, args)
        gout = torch.randn_like(base)
        bwd_args = (gout, x, down.detach(), up.detach(), gate, scale, conv)
        torch.library.opcheck(torch.ops.spmctl.membrane_bwd.default, bwd_args)


@pytest.mark.parametrize("layout", ["linear", "conv_cl"])
def test_opcheck_inplace(fused, layout):
    """The in-place op (CPU only): schema (it mutates `out` and returns it), fake kernel, no autograd."""
    x, base, down, up, gate, scale, conv = make_case(layout, torch.float32, 3, 2)
    torch.library.opcheck(torch.ops.spmctl.membrane_fwd_.default, (base.clone(), x, down, up, gate, scale, conv))


def test_torch_compile_traces_the_op(fused):
    from spmctl.ops import membrane

    x, base, down, up, gate, scale, conv = make_case("linear", torch.float32, 1, 1)
    down.requires_grad_()
    compiled = torch.compile(
        lambda a, b, d: membrane(a, b, d, up, gate, scale, conv), backend="aot_eager", fullgraph=True
    )
    out = compiled(x, base, down)
    out.sum().backward()
    torch.testing.assert_close(out, membrane_reference(x, base, down, up, gate, scale, conv))
    assert down.grad is not None and down.grad.abs().sum() > 0


def test_extension_sources_for_setup_py():
    spec = extension_sources(with_cuda=True, prebuilt=True)
    names = [Path(s).name for s in spec["sources"]]
    assert names == ["membrane_op.cpp", "membrane_autograd.cpp", "linear_membrane.cpp", "membrane_cuda.cpp",
                     "membrane_kernels.cu", "pymodule.cpp"]
    assert all(Path(s).is_file() for s in spec["sources"])
    rel = extension_sources(with_cuda=False, root=csrc_dir().parent)
    assert rel["sources"] == [
        os.path.join("csrc", n) for n in ("membrane_op.cpp", "membrane_autograd.cpp", "linear_membrane.cpp")
    ]
    assert not rel["with_cuda"]
    assert "-march=native" not in spec["extra_compile_args"]["cxx"]  # prebuilt wheels stay portable


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-W", "always", "-c", textwrap.dedent(code)],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_second_process_reuses_the_build(fused):
    name, folder, _ = jit_spec()
    library = folder / f"{name}.so"
    assert library.exists()
    before = library.stat().st_mtime_ns
    proc = _run("""
        import spmctl.ops.fused as m
        print(m.load_fused())
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "fused" and "unavailable" not in proc.stderr
    assert library.stat().st_mtime_ns == before


def test_reference_fallback_and_forced_fused(tmp_path):
    code = """
        import torch, warnings
        import spmctl.ops.fused as m
        from spmctl.ops import membrane
        x = torch.randn(2, 3, 4); d = torch.randn(1, 1, 4); u = torch.randn(1, 5, 1)
        out = membrane(x, torch.zeros(2, 3, 5), d, u, torch.ones(2, 1), torch.ones(1))
        membrane(x, out, d, u, torch.ones(2, 1), torch.ones(1))
        print(m.kernel_backend())
    """
    chosen = _run(code, SPMCTL_KERNEL="reference")
    assert chosen.returncode == 0 and chosen.stdout.strip() == "reference" and "Warning" not in chosen.stderr
    broken = {"SPMCTL_BUILD_DIR": str(tmp_path), "CXX": "/nonexistent/c++"}
    auto = _run(code, SPMCTL_KERNEL="auto", **broken)
    assert auto.returncode == 0, auto.stderr
    assert auto.stdout.strip() == "reference"
    assert auto.stderr.count("fused membrane kernel is unavailable") == 1  # one warning, not one per call
    forced = _run(code, SPMCTL_KERNEL="fused", **broken)
    assert forced.returncode != 0 and "SPMCTL_KERNEL=fused" in forced.stderr


NVCC = shutil.which("nvcc") or ("/usr/local/bin/nvcc" if os.path.exists("/usr/local/bin/nvcc") else None)


@pytest.mark.skipif(NVCC is None, reason="nvcc (CUDA toolkit) not found")
def test_cuda_kernels_compile_with_nvcc(tmp_path):
    source = csrc_dir() / "membrane_kernels.cu"
    archs = ["-gencode=arch=compute_80,code=sm_80"]  # one arch: the code has no per-arch branches
    proc = subprocess.run(
        [NVCC, "-std=c++17", "-O3", *archs, "-c", str(source), "-o", str(tmp_path / "k.o")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "k.o").stat().st_size > 0


def _cuda_include() -> Path | None:
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    if NVCC is not None:
        roots.append(str(Path(os.path.realpath(NVCC)).parent.parent))
    for root in filter(None, roots):
        if (Path(root) / "include" / "cuda_runtime.h").exists():
            return Path(root) / "include"
    return None


@pytest.mark.skipif(
    _cuda_include() is None or shutil.which("c++") is None, reason="CUDA headers or c++ missing"
)
def test_cuda_glue_parses_against_torch_headers(tmp_path):
    """The CUDA torch glue is only built with a CUDA torch; here it is at least type-checked against
    the installed torch headers (the one generated header the CPU wheel lacks is stubbed)."""
    from torch.utils.cpp_extension import include_paths

    stub = tmp_path / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n")
    cmd = ["c++", "-std=c++20", "-fsyntax-only", f"-I{csrc_dir()}", f"-I{tmp_path}", f"-I{_cuda_include()}"]
    cmd += [f"-isystem{p}" for p in include_paths()] + [str(csrc_dir() / "membrane_cuda.cpp")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["linear", "conv", "conv_cl"])
def test_inplace_form_matches(fused_on, device, layout, dtype):
    """membrane_ (no-grad work: denoising, sampling) adds into base_out in place (on the CPU)."""
    from spmctl.ops import membrane_

    x, base, down, up, gate, scale, conv = on(device, make_case(layout, dtype, 3, 2))
    expected = membrane_reference(x, base, down, up, gate, scale, conv)
    out = base.clone()
    got = membrane_(out, x, down, up, gate, scale, conv)
    assert (got.data_ptr() == out.data_ptr()) == (device.type == "cpu")  # really in place on the CPU
    tol = TOL[dtype]
    torch.testing.assert_close(got, expected, atol=tol * 4, rtol=tol)
    assert torch.equal(got[0], base[0])  # gate-0 sample untouched


@pytest.mark.parametrize("k,r", [(1, 1), (2, 1), (3, 1), (4, 1), (2, 2), (9, 2)], ids=lambda v: str(v))
@pytest.mark.parametrize("layout", ["linear", "conv", "conv_cl"])
def test_fp32_kernels_for_each_j(fused, layout, k, r):
    """The fp32 kernels specialise on J = K*r (1-4, up to 16, beyond): every branch, in place and not,
    with channel counts and positions that fill whole vectors (32, 8x8) and ones that don't."""
    from spmctl.ops import membrane_

    g = torch.Generator().manual_seed(k * 10 + r)
    for cin, cout, hw in ((32, 256, (8, 8)), (37, 45, (5, 7))):
        x = torch.randn(3, 16, cin, generator=g) if layout == "linear" else torch.randn(3, cin, *hw, generator=g)
        base = torch.randn(*x.shape[:-1], cout) if layout == "linear" else torch.randn(3, cout, *hw)
        if layout == "conv_cl":
            x, base = (t.to(memory_format=torch.channels_last) for t in (x, base))
        down, up = torch.randn(k, r, cin, generator=g) * 0.3, torch.randn(k, cout, r, generator=g) * 0.3
        gate = torch.rand(3, k, generator=g)
        gate[0] = 0.0
        scale = torch.rand(k, generator=g) + 0.5
        conv = layout != "linear"
        expected = membrane_reference(x, base, down, up, gate, scale, conv)
        torch.testing.assert_close(fused(x, base, down, up, gate, scale, conv), expected, atol=1e-4, rtol=1e-5)
        got = membrane_(base.clone(), x, down, up, gate, scale, conv)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-5)
        assert torch.equal(got[0], base[0])


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("k,r", [(1, 1), (2, 1), (3, 2), (9, 2)], ids=lambda v: str(v))
def test_linear_membrane_is_the_layer_plus_its_membranes(fused, k, r, bias):
    """linear_membrane (sampling: layer + membranes in one op) equals F.linear + the reference, and a
    gate-0 sample is F.linear's output bit for bit (bias written first, then the same addmm)."""
    from spmctl.ops import linear_membrane

    g = torch.Generator().manual_seed(k + 7 * r)
    for cin, cout in ((32, 256), (37, 45), (1280, 320)):
        x = torch.randn(3, 16, cin, generator=g)
        weight = torch.randn(cout, cin, generator=g) / cin**0.5
        b = torch.randn(cout, generator=g) if bias else None
        down, up = torch.randn(k, r, cin, generator=g) * 0.3, torch.randn(k, cout, r, generator=g) * 0.3
        gate = torch.rand(3, k, generator=g)
        gate[0] = 0.0
        scale = torch.rand(k, generator=g) + 0.5
        layer = torch.nn.functional.linear(x, weight, b)
        got = linear_membrane(x, weight, b, down, up, gate, scale)
        expected = membrane_reference(x, layer, down, up, gate, scale, False)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-5)
        assert torch.equal(got[0], layer[0])
    args = (x, weight, b, down, up, gate, scale)
    torch.library.opcheck(torch.ops.spmctl.linear_membrane.default, args)


def test_membrane_wrapper_keeps_hooks_on_the_layer(fused):
    """The fused linear path skips calling the wrapped layer, so a layer with hooks takes the
    layer-then-membrane path instead (same result, hook called)."""
    from spmctl.membrane.module import GateState, MembraneModule

    torch.manual_seed(0)
    state = GateState(2)
    state.set(torch.tensor([[1.0, 0.5], [0.0, 0.0]]))
    wrapper = MembraneModule(torch.nn.Linear(32, 48), "lora_unet_x", 1, 1.0, 2, state)
    torch.nn.init.normal_(wrapper.lora_up, std=0.3)
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        fused_out = wrapper(x)
        seen = []
        wrapper.base.register_forward_hook(lambda *a: seen.append(1))
        hooked_out = wrapper(x)
    assert seen == [1]
    torch.testing.assert_close(fused_out, hooked_out, atol=1e-5, rtol=1e-5)
    assert torch.equal(fused_out[1], torch.nn.functional.linear(x[1], wrapper.weight, wrapper.bias))


def test_membrane_wrapper_under_cpu_autocast_runs_the_layer_in_its_dtype(fused):
    """Under autocast the layer runs in bf16; the fused fp32 linear path must not bypass that."""
    from spmctl.membrane.module import GateState, MembraneModule

    torch.manual_seed(0)
    state = GateState(1)
    wrapper = MembraneModule(torch.nn.Linear(32, 48), "lora_unet_x", 1, 1.0, 1, state)
    x = torch.randn(2, 5, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert wrapper(x).dtype == torch.bfloat16


def test_two_threads_give_the_same_result(fused):
    """The CPU kernels split rows into per-thread chunks with a fixed reduction order: at a fixed thread
    count, results are bitwise reproducible; across thread counts they agree to rounding."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 300, 40, generator=g, requires_grad=True)
    base = torch.randn(4, 300, 48, generator=g)
    down = (torch.randn(2, 1, 40, generator=g) * 0.3).requires_grad_()
    up = (torch.randn(2, 48, 1, generator=g) * 0.3).requires_grad_()
    gate, scale = torch.rand(4, 2, generator=g), torch.tensor([1.0, 0.5])
    results = {}
    for threads in (1, 2, 2, 1):
        torch.set_num_threads(threads)
        try:
            for t in (x, down, up):
                t.grad = None
            out = fused(x, base, down, up, gate, scale, False)
            out.sum().backward()
            got = [out.detach(), x.grad.clone(), down.grad.clone(), up.grad.clone()]
        finally:
            torch.set_num_threads(1)
        if threads in results:
            for name, a, b in zip(("out", "grad x", "grad down", "grad up"), results[threads], got, strict=True):
                assert torch.equal(a, b), f"{name} differs between two runs on {threads} thread(s)"
        results[threads] = got
    for a, b in zip(results[1], results[2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    ref = membrane_reference(x, base, down, up, gate, scale, False)
    torch.testing.assert_close(results[1][0], ref.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["linear", "conv_cl"])
def test_dispatcher_picks_the_fused_op_where_it_applies(fused_on, device, layout, dtype):
    """membrane() takes the fused op (with autograd), membrane_() the in-place one on the CPU and
    linear_membrane() the layer-plus-membrane op on CPU fp32; each result equals the reference's."""
    from spmctl.ops import linear_membrane, membrane, membrane_

    x, base, down, up, gate, scale, conv = on(device, make_case(layout, dtype, 3, 2))
    expected = membrane_reference(x, base, down, up, gate, scale, conv)
    tol = TOL[dtype]
    membrane(x, base, down, up, gate, scale, conv)  # the first call on a device runs its self-check
    with OpLog() as log:
        got = membrane(x.requires_grad_(), base, down, up, gate, scale, conv)
    assert log.spmctl_ops() == {"spmctl.membrane_fwd.default"}
    torch.testing.assert_close(got, expected, atol=tol * 4, rtol=tol)
    with OpLog() as log:
        got = membrane_(base.clone(), x.detach(), down, up, gate, scale, conv)
    inplace = "spmctl.membrane_fwd_.default" if device.type == "cpu" else "spmctl.membrane_fwd.default"
    assert log.spmctl_ops() == {inplace}
    torch.testing.assert_close(got, expected, atol=tol * 4, rtol=tol)
    if layout == "linear" and dtype == torch.float32 and device.type == "cpu":
        weight = torch.randn(base.shape[-1], x.shape[-1])
        with OpLog() as log:
            got = linear_membrane(x.detach(), weight, None, down, up, gate, scale)
        assert log.spmctl_ops() == {"spmctl.linear_membrane.default"}
        layer = torch.nn.functional.linear(x.detach(), weight)
        expected = membrane_reference(x, layer, down, up, gate, scale, False)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-5)


@pytest.mark.cuda
def test_dispatcher_takes_the_reference_where_the_cuda_kernels_do_not_apply(fused_on):
    """K*rank beyond the CUDA kernels' registers, and float64, go to the reference on a GPU."""
    from spmctl.ops import MAX_CUDA_J, membrane

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    for case in (make_case("linear", torch.float32, 3, MAX_CUDA_J // 3 + 1), make_case("linear", torch.float64, 1, 1)):
        x, base, down, up, gate, scale, conv = on(torch.device("cuda"), case)
        with OpLog() as log:
            got = membrane(x, base, down, up, gate, scale, conv)
        assert log.spmctl_ops() == set()
        torch.testing.assert_close(got, membrane_reference(x, base, down, up, gate, scale, conv))


def test_dispatcher_with_spmctl_kernel_reference_never_calls_the_fused_op():
    proc = _run("""
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode
        from spmctl.ops import membrane
        seen = []
        class Log(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                seen.append(str(func))
                return func(*args, **(kwargs or {}))
        x = torch.randn(2, 3, 4); d = torch.randn(1, 1, 4); u = torch.randn(1, 5, 1)
        with Log():
            membrane(x, torch.zeros(2, 3, 5), d, u, torch.ones(2, 1), torch.ones(1))
        print(sorted({op for op in seen if op.startswith("spmctl.")}), len(seen) > 0)
    """, SPMCTL_KERNEL="reference")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[] True"
