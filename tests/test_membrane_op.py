"""The fused membrane op against its PyTorch reference; build, fallback and nvcc compile checks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from spmctl.ops import membrane_reference
from spmctl.ops.build import csrc_dir, extension_sources, jit_spec

TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float64: 1e-12}


@pytest.fixture(scope="module")
def fused():
    """Build (once, shared cache) and load the fused op; skip where no compiler is available."""
    if os.environ.get("SPMCTL_KERNEL") == "reference":
        pytest.skip("SPMCTL_KERNEL=reference")
    import spmctl.ops.fused as mod

    if mod.load_fused() != "fused":
        pytest.skip(f"fused kernel unavailable: {mod._reason}")
    return torch.ops.spmctl.membrane_fwd


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


@pytest.mark.parametrize("k,r", [(1, 1), (3, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["linear", "conv", "conv_cl"])
def test_fused_matches_reference(fused, layout, dtype, k, r):
    x, base, down, up, gate, scale, conv = make_case(layout, dtype, k, r)
    leaves = [t.clone().requires_grad_() for t in (x, base, down, up)]
    results = []
    for fn in (fused, membrane_reference):
        inputs = [t.detach().clone().requires_grad_() for t in leaves]
        out = fn(inputs[0], inputs[1], inputs[2], inputs[3], gate, scale, conv)
        grad = torch.linspace(-1, 1, out.numel()).reshape(out.shape).to(dtype)
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


def test_opcheck(fused):
    for layout, dtype in (("linear", torch.float32), ("conv_cl", torch.float32), ("conv", torch.bfloat16)):
        x, base, down, up, gate, scale, conv = make_case(layout, dtype, 3, 2)
        args = (x, base, down.requires_grad_(), up.requires_grad_(), gate, scale, conv)
        torch.library.opcheck(torch.ops.spmctl.membrane_fwd.default, args)
        gout = torch.randn_like(base)
        bwd_args = (gout, x, down.detach(), up.detach(), gate, scale, conv)
        torch.library.opcheck(torch.ops.spmctl.membrane_bwd.default, bwd_args)


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
    archs = ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90"]
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
def test_inplace_form_matches(fused, layout, dtype):
    """membrane_ (no-grad work: denoising, sampling) adds into base_out in place."""
    from spmctl.ops import membrane_

    x, base, down, up, gate, scale, conv = make_case(layout, dtype, 3, 2)
    expected = membrane_reference(x, base, down, up, gate, scale, conv)
    out = base.clone()
    got = membrane_(out, x, down, up, gate, scale, conv)
    assert got.data_ptr() == out.data_ptr()  # really in place on the CPU
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
    """The CPU kernels split rows into per-thread chunks with fixed reduction order."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 300, 40, generator=g, requires_grad=True)
    base = torch.randn(4, 300, 48, generator=g)
    down = (torch.randn(2, 1, 40, generator=g) * 0.3).requires_grad_()
    up = (torch.randn(2, 48, 1, generator=g) * 0.3).requires_grad_()
    gate, scale = torch.rand(4, 2, generator=g), torch.tensor([1.0, 0.5])
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        try:
            for t in (x, down, up):
                t.grad = None
            out = fused(x, base, down, up, gate, scale, False)
            out.sum().backward()
            results.append([out.detach(), x.grad.clone(), down.grad.clone(), up.grad.clone()])
        finally:
            torch.set_num_threads(1)
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    ref = membrane_reference(x, base, down, up, gate, scale, False)
    torch.testing.assert_close(results[0][0], ref.detach(), rtol=1e-5, atol=1e-5)
