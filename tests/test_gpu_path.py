"""The GPU path as far as a CPU machine can check it: arch flags, launch-failure fallback, the
first-use self-check (through its SPMCTL_TEST_FAULT hook), and `spmctl doctor`.

Mutations these tests catch (each was made on purpose and seen to fail):
- cuda_arch_flags ignores the capabilities (`elif capabilities:` -> `elif False:`), or drops the PTX
  of the newest arch;
- membrane() re-raises a launch failure instead of falling back (caught_at_the_call);
- the self-check's mismatch does not disable the device (`if problem:` -> `if False:`);
- build_root ignores TORCH_EXTENSIONS_DIR (the doctor test).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import run_spmctl

from spmctl.ops.build import AOT_ARCHS, cuda_arch_flags, extension_sources, jit_spec, parse_arch_list

CUDA13 = [75, 80, 86, 87, 88, 89, 90, 100, 103, 110, 120, 121]  # `nvcc --list-gpu-arch` of CUDA 13.0


def sm(*nums: int, ptx: int) -> list[str]:
    code = [f"-gencode=arch=compute_{n},code=sm_{n}" for n in nums]
    return code + [f"-gencode=arch=compute_{ptx},code=compute_{ptx}"]


def test_jit_arch_flags_follow_the_visible_gpus():
    assert cuda_arch_flags([(7, 5)], None, CUDA13) == sm(75, ptx=75)  # a T4
    assert cuda_arch_flags([(9, 0), (8, 6), (8, 6)], None, CUDA13) == sm(86, 90, ptx=90)  # mixed, deduplicated
    # a GPU newer than the compiler: the compiler's newest code, and its PTX for the driver to compile
    assert cuda_arch_flags([(12, 0)], None, [75, 80, 86, 89, 90]) == sm(90, ptx=90)
    # TORCH_CUDA_ARCH_LIST's syntax wins over the devices, +PTX honoured, newest always gets PTX too
    flags = cuda_arch_flags([(9, 0)], "7.5 8.6+PTX;Hopper", None)
    assert flags == sm(75, 86, 90, ptx=86) + ["-gencode=arch=compute_90,code=compute_90"]
    with pytest.raises(ValueError, match="8.x"):
        parse_arch_list("8.x")


def test_aot_arch_list_covers_volta_to_hopper_and_blackwell_by_ptx():
    assert cuda_arch_flags(None, None, None) == sm(70, 75, 80, 86, 89, 90, ptx=90)
    assert [n for n, _ in parse_arch_list(AOT_ARCHS)] == [70, 75, 80, 86, 89, 90]
    # CUDA 13 cannot target sm_70: left out, the rest kept (Blackwell runs the sm_90 PTX)
    assert cuda_arch_flags(None, None, CUDA13) == sm(75, 80, 86, 89, 90, ptx=90)
    with pytest.raises(RuntimeError, match="no CUDA architecture"):
        cuda_arch_flags([(7, 0)], None, CUDA13)  # a V100 with CUDA 13: build fails, the reference serves


def test_arch_list_reaches_the_build_and_its_hash(monkeypatch):
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "7.5")
    assert extension_sources(with_cuda=True)["extra_compile_args"]["nvcc"][-2:] == sm(75, ptx=75)
    assert extension_sources(with_cuda=False)["extra_compile_args"]["nvcc"] == []
    if torch.version.cuda is not None:
        first = jit_spec(with_cuda=True)[0]
        monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.6")
        assert jit_spec(with_cuda=True)[0] != first  # another GPU, another build folder


CALLS = """
    import torch
    from spmctl.ops import linear_membrane, membrane, membrane_, membrane_reference
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 8, generator=g, requires_grad=True)
    base, w = torch.randn(2, 5, 6, generator=g), torch.randn(6, 8, generator=g)
    d, u = torch.randn(2, 1, 8, generator=g), torch.randn(2, 6, 1, generator=g)
    gate, scale = torch.rand(2, 2, generator=g), torch.ones(2)
    expected = membrane_reference(x, base, d, u, gate, scale)
    for _ in range(3):
        out = membrane(x, base, d, u, gate, scale)
        out.sum().backward()
        assert torch.equal(out, expected), "not the reference's result"
        with torch.no_grad():
            assert torch.equal(membrane_(base.clone(), x, d, u, gate, scale), expected)
            assert linear_membrane(x, w, None, d, u, gate, scale) is None  # the caller takes the split path
    print("ok")
"""


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("SPMCTL_")}
    return subprocess.run([sys.executable, "-W", "always", "-c", textwrap.dedent(code)], env={**full, **env},
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("self_check", ["1", "0"], ids=["caught_by_self_check", "caught_at_the_call"])
def test_launch_failure_falls_back_to_the_reference_with_one_warning(fused, self_check):
    """A kernel with no code for the GPU ("no kernel image is available") leaves the device to the
    reference: no crash, results exactly the reference's, one warning naming the error."""
    proc = run_python(CALLS, SPMCTL_TEST_FAULT="launch", SPMCTL_SELF_CHECK=self_check)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "ok"
    assert proc.stderr.count("RuntimeWarning") == 1, proc.stderr
    assert "not used on cpu: its kernel cannot launch there" in proc.stderr
    assert "no kernel image is available" in proc.stderr


@pytest.mark.parametrize("fault,what", [("forward", "forward"), ("backward", "grad x")])
def test_self_check_mismatch_disables_the_fused_op_on_that_device(fused, fault, what):
    """A wrong kernel result at the first-use check: one warning naming the difference, then the
    reference computes everything on that device."""
    proc = run_python(CALLS, SPMCTL_TEST_FAULT=fault)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "ok"
    assert proc.stderr.count("RuntimeWarning") == 1, proc.stderr
    assert f"disagrees with the reference in float32: {what} differs by 0.25 (allowed" in proc.stderr


def test_self_check_passes_and_the_fused_op_serves(fused):
    proc = run_python("""
        import torch
        from spmctl.ops import membrane, selfcheck
        x = torch.randn(2, 5, 8)
        membrane(x, torch.zeros(2, 5, 6), torch.randn(1, 1, 8), torch.randn(1, 6, 1), torch.ones(2, 1), torch.ones(1))
        print(selfcheck.results())
    """)
    assert proc.returncode == 0 and "Warning" not in proc.stderr, proc.stderr
    assert proc.stdout.strip() == "{'cpu float32': 'passed'}"


def test_doctor_json_reports_what_a_bug_report_needs(fused, tmp_path):
    proc = run_spmctl("doctor", "--json", "--output-dir", str(tmp_path / "new" / "runs"),
                      env={"SPMCTL_TEST_FAULT": "backward"})
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert rep["torch"] == torch.__version__ and rep["torch_cuda"] == torch.version.cuda
    assert rep["gpus"] == ([] if not torch.cuda.is_available() else rep["gpus"])
    assert rep["compiler"]["cxx"] and {"nvcc", "nvcc_version", "cuda_home", "ninja"} <= rep["compiler"].keys()
    kernel = rep["kernel"]
    assert kernel["backend"] == "fused" and kernel["built"] and kernel["build_dir"] == str(jit_spec()[1])
    assert kernel["self_check"]["cpu float32"].startswith("grad x differs by 0.25 (allowed ")
    assert {p["name"]: p["status"] for p in rep["plugins"]}["templates"] == "loaded"
    assert rep["hub_cache"] and rep["disk"]["outputs"]["path"] == str(tmp_path / "new" / "runs")
    assert all(d["free_gib"] > 0 for d in rep["disk"].values())
    assert "not used on cpu" in proc.stderr  # the self-check's one warning


def test_doctor_honours_torch_extensions_dir_and_does_not_build_unasked(tmp_path):
    proc = run_spmctl("doctor", env={"TORCH_EXTENSIONS_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert f"kernel build  {tmp_path / 'spmctl'}" in proc.stdout and "(not built)" in proc.stdout
    assert "not built yet" in proc.stdout and "building" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing built, nothing written


@pytest.mark.slow
def test_doctor_build_builds_ahead_and_says_so(tmp_path):
    """What install.sh runs: the build says what it does and how long it took; the next process
    loads it without building."""
    env = {"TORCH_EXTENSIONS_DIR": str(tmp_path)}
    name, built, _ = jit_spec()  # this session's build (install.sh made it): its compiled objects are reused,
    if (built / "built.ok").is_file():  # so only the link step runs; the session compiles the kernel once
        shutil.copytree(built, tmp_path / "spmctl" / name, ignore=shutil.ignore_patterns("*.so", "built.ok"))
    proc = run_spmctl("doctor", "--build", "--json", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "spmctl: building the fused membrane kernel once for this machine" in proc.stderr
    assert "spmctl: membrane kernel built in" in proc.stderr
    rep = json.loads(proc.stdout)
    assert rep["kernel"]["backend"] == "fused" and rep["kernel"]["build_dir"].startswith(str(tmp_path / "spmctl"))
    again = run_spmctl("doctor", env=env)
    assert again.returncode == 0 and "building" not in again.stderr
    assert "kernel        fused" in again.stdout
