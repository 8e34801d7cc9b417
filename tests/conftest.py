"""Shared fixtures: the installed `spmctl` as a subprocess, the tiny model, plugin packages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

# Tiny models run faster on one thread, and on a shared 2-core machine several threads per
# process thrash; subprocesses (the installed `spmctl`) inherit this too.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Tests read tables that spmctl prints unbounded when COLUMNS is unset (not a terminal); the
# terminal's size must not decide them, and pytest-xdist's workers start with COLUMNS=80. A test
# that wants a width passes COLUMNS itself.
for _var in ("COLUMNS", "LINES"):
    os.environ.pop(_var, None)

import pytest  # noqa: E402

SPMCTL = Path(sys.executable).parent / "spmctl"
TESTS = Path(__file__).parent


def run_spmctl(*args: str, env: dict[str, str] | None = None, cwd: str | Path | None = None,
               timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the installed console script, as a user would."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    for key in [k for k in full_env if k.startswith("SPMCTL_") and (env is None or k not in env)]:
        del full_env[key]  # the developer's own settings must not leak into tests
    return subprocess.run([str(SPMCTL), *args], capture_output=True, text=True, env=full_env, cwd=cwd,
                          timeout=timeout)


# A training config for the tiny model that runs in seconds; tests override what they exercise.
TINY_TRAIN = {
    "pretrained_model": {"ckpt_path": "tiny"},
    "train": {"iterations": 40, "lr": 3e-3, "optimizer_type": "AdamW", "lr_scheduler": "constant",
              "lr_warmup_steps": 0, "max_denoising_steps": 10},
    "save": {"per_steps": 1000},
    "template": "concept", "template_name": "cat",
    "prompt": {"action": "erase_with_la", "resolution": 64, "dynamic_resolution": False,
               # the paper's 1000 suits SD's structured text space; the tiny random model needs less
               "la_strength": 10, "sampling_batch_size": 2},
    "devices": "cpu", "seed": 0,
}


def write_train_config(path: Path, base: dict | None = None, **overrides) -> Path:
    """`base` (default TINY_TRAIN) with overrides: `section__key=value`, a dict merged into its
    section, or a plain top-level value."""
    import json

    import yaml

    cfg = json.loads(json.dumps(base or TINY_TRAIN))
    for key, value in overrides.items():
        *parents, leaf = key.split("__")
        node = cfg
        for part in parents:
            node = node.setdefault(part, {})
        if isinstance(value, dict) and isinstance(node.get(leaf), dict):
            node[leaf] = {**node[leaf], **value}
        else:
            node[leaf] = value
    path.write_text(yaml.safe_dump(cfg))
    return path


# The longest modules (most time first, measured with --durations), run first: with `-n auto` a
# module's tests stay on one worker, and a long module scheduled last would leave the other workers
# idle while it finishes (test_training.py, the longest, is also last by name).
LONGEST_MODULES_FIRST = ("test_training.py", "test_outputs.py", "test_distributed.py", "test_attack.py",
                         "test_benchmark.py", "test_api.py", "test_benchmark_attack.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_MODULES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """In-process torch too (it may have been imported before OMP_NUM_THREADS was read)."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def process_state_restored():
    """Quiet mode (`quiet=True`, `-q`) silences the whole process it runs in, and the workers it
    starts (environment, warning filters, logging, stderr): right for the CLI, but a test calling it
    in-process must not silence the tests after it (their `spmctl` subprocesses inherit the
    environment), so each test gets the process state back as it found it."""
    import logging
    import warnings

    env, stderr, disabled = dict(os.environ), sys.stderr, logging.root.manager.disable
    with warnings.catch_warnings():
        yield
    os.environ.clear()
    os.environ.update(env)
    sys.stderr = stderr
    logging.disable(disabled)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in tiny model saved as a diffusers folder (what a downloaded model looks like)."""
    from spmctl.families.sd1.tiny import build_tiny_pipeline
    from spmctl.models.tiny import save_tiny

    return save_tiny(build_tiny_pipeline(), tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def trained_cat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-step run of "cat" on the tiny model (TINY_TRAIN, `train.iterations: 2`): its
    run folder, trained once per session. Read it freely; copy it (`copy_run`) before writing to it."""
    from spmctl.config.train import load_train_config
    from spmctl.training.run import run_training

    tmp = tmp_path_factory.mktemp("trained-cat")
    cfg, _ = load_train_config(write_train_config(tmp / "c.yaml", output_dir=str(tmp / "run"),
                                                  train__iterations=2))
    return run_training(cfg, quiet=True).parent


def copy_run(run: Path, into: Path) -> Path:
    """A private copy of a shared run folder (e.g. `trained_cat`) at `into`, to resume or change."""
    import shutil

    shutil.copytree(run, into)
    return into


def pip_install_plugins(site: Path, tmp: Path, *names: str) -> Path:
    """Packages of tests/plugin_pkgs pip-installed into `site`, a folder to put on PYTHONPATH, as a
    user's `pip install` would (real entry points, real distribution metadata)."""
    import shutil

    sources = []
    for name in names:
        sources.append(str(tmp / name))  # build outside the repo: no build/ left in tests/
        shutil.copytree(TESTS / "plugin_pkgs" / name, sources[-1])
    subprocess.run(  # one pip run for all: each start costs seconds
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(site), *sources],
        check=True, capture_output=True, text=True,
    )
    return site


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example and the broken plugin, installed into a folder put on PYTHONPATH."""
    return pip_install_plugins(tmp_path_factory.mktemp("site"), tmp_path_factory.mktemp("src"),
                               "spmctl-example-plugin", "spmctl-broken-plugin")


def write_sample_folder(folder: Path, images: list[tuple[Any, dict[str, Any]]],
                        spms: list[str] | None = None, concepts: list[list[str]] | None = None) -> Path:
    """A folder as `spmctl sample` leaves it: PNGs (H×W×3 float arrays) with metadata and
    manifest.jsonl, written by sampling's own writers."""
    from spmctl.sampling.output import ManifestWriter, save_png

    writer = ManifestWriter(folder, {})
    names = []
    for i, (pixels, fields) in enumerate(images):
        prompt = fields.get("prompt", f"prompt {i}")
        record = {
            "file": f"img_{i:03d}.png", "prompt": prompt, "seed": fields.get("seed", 0), "index": 0,
            "image_seed": fields.get("seed", 0), "guidance": 7.5, "width": pixels.shape[1],
            "height": pixels.shape[0], "steps": 2, "spms": spms or [], "spm_sha256": ["0" * 64] * len(spms or []),
            "gates": [1.0] * len(spms or []), "concepts": concepts or [], "negative_prompt": "", "model": "tiny",
            "noise_scheduler": "ddim", "ft_compat": "fixed", "clip_skip": None, "precision": "fp32", "ft": True,
            "ft_metric": "clip", "categories": fields.get("categories", []), "concept": fields.get("concept"),
        }
        save_png(folder / record["file"], pixels, record)
        writer.add(record)
        names.append(record["file"])
    writer.finish(names)
    return folder


def save_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A randomly initialised CLIP (one 32-wide layer per tower, 32 px images; `seed` draws its weights)
    with its processor, saved as a local model folder: what `--clip-model DIR` loads, offline, in a
    fraction of a second."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from spmctl.models.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    layers = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 2}
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}  # pooled at the tokenizer's own end token: captions differ
    text = {"vocab_size": tokenizer.vocab_size, "max_position_embeddings": 77, **layers, **ids}
    config = CLIPConfig(text_config=text,
                        vision_config={"image_size": 32, "patch_size": 8, **layers}, projection_dim=16)
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                  tokenizer=tokenizer).save_pretrained(folder)
    return folder


def flat(rgb: tuple[float, float, float], size: int = 32) -> Any:
    """A one-colour image as sampling's writers take it (H×W×3 floats in [0, 1])."""
    import numpy as np

    return np.broadcast_to(np.array(rgb, dtype=np.float32), (size, size, 3)).copy()


def make_spm(
    path: Path, concepts: list[str], seed: int, rank: int = 1, alpha: float = 1.0, std: float = 0.3,
    model: str = "tiny",
) -> Path:
    """A membrane for a tiny model (`model`: its -m name) with random nonzero weights from a fixed seed."""
    import torch

    from spmctl.families import load_model
    from spmctl.membrane import MembraneNetwork, save_membrane

    net = MembraneNetwork.for_model(load_model(model), rank=rank, alpha=alpha)
    gen = torch.Generator().manual_seed(seed)
    tensors = {
        k: (torch.randn(v.shape, generator=gen) * std if k.endswith(".weight") else v)
        for k, v in net.state_dict_for(0).items()
    }
    net.detach()
    return save_membrane(path, tensors, prompts=concepts, rank=rank, alpha=alpha)


@pytest.fixture(scope="module")
def spms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two membranes for the tiny model: "cat" (rank 1) and "dog"+"horse" (rank 2)."""
    root = tmp_path_factory.mktemp("spms")
    return {
        "cat": make_spm(root / "cat.safetensors", ["cat"], seed=1),
        "dog": make_spm(root / "dog.safetensors", ["dog", "horse"], seed=2, rank=2, alpha=1.0),
    }


@pytest.fixture(scope="session")
def sdxl_trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One `spmctl train -m tiny-sdxl` run (erase_with_la, TINY_TRAIN's settings), shared by the SDXL
    tests: (its config, its membrane)."""
    out = tmp_path_factory.mktemp("sdxl_train")
    cfg = write_train_config(out / "cfg.yaml", pretrained_model={"ckpt_path": "tiny-sdxl"}, output_dir=str(out / "run"))
    done = run_spmctl("train", "-c", str(cfg), "--quiet")
    assert done.returncode == 0, done.stderr
    return cfg, out / "run" / "cat_last.safetensors"


@pytest.fixture(scope="module")
def tiny():
    """The built-in tiny model, loaded once per module (tests attach membranes to it)."""
    from spmctl.families import load_model

    return load_model("tiny")


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request: pytest.FixtureRequest):
    """Op and network tests run on each device, as extension-cpp's do: CUDA cases skip without a GPU,
    and `pytest -m cuda` selects them (benchmarks/gpu_check.sh)."""
    import torch

    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    return torch.device(request.param)


@pytest.fixture(scope="session")
def fused():
    """Build (once, shared cache) and load the fused op; skip where no compiler is available."""
    if os.environ.get("SPMCTL_KERNEL") == "reference":
        pytest.skip("SPMCTL_KERNEL=reference")
    import torch

    import spmctl.ops.fused as mod

    if mod.load_fused() != "fused":
        pytest.skip(f"fused kernel unavailable: {mod._reason}")
    return torch.ops.spmctl.membrane_fwd


@pytest.fixture
def fused_on(fused, device):
    """The fused op where it has a kernel for `device` (a CUDA torch built without nvcc has none)."""
    import torch

    if device.type == "cuda" and not torch._C._dispatch_has_kernel_for_dispatch_key("spmctl::membrane_fwd", "CUDA"):
        pytest.skip("the fused op was built without CUDA kernels")
    return fused


@pytest.fixture(scope="module")
def canvas_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The classifier plugins the benchmark tests judge with, and the captions dataset (one pip run for all)."""
    site = pip_install_plugins(tmp_path_factory.mktemp("canvas-site"), tmp_path_factory.mktemp("canvas-src"),
                               "spmctl-canvas-plugin", "spmctl-verdict-plugin", "spmctl-coco-plugin")
    return {"PYTHONPATH": str(site)}


@pytest.fixture(scope="module")
def train_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smallest training that runs every part: 1 iteration, 2 denoising steps (the least allowed), 32 px."""
    return write_train_config(tmp_path_factory.mktemp("cfg") / "train.yaml", train__iterations=1,
                              train__max_denoising_steps=2, prompt={"resolution": 32, "sampling_batch_size": 1})
