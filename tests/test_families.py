"""Model families (issue 17): the registry and its plugin hook, detection, and the memory work
(gradient checkpointing, a low-precision base with an fp32 membrane, the peak-memory estimate)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_spmctl, write_train_config

from spmctl import plugins
from spmctl.errors import SpmctlError
from spmctl.families import detect, families, load_model, probe, tiny_names
from spmctl.families.sd1.family import SD1Family
from spmctl.hookspecs import hookimpl


class PluginFamily(SD1Family):
    """A third party's family: SD 1.x under another name, for its own pipeline class and tiny name."""

    name = "plugin-sd"
    description = "registered by a test"
    tiny_names = ("tiny-plugin",)

    def detect(self, probe):
        return probe.pipeline_class == "PluginPipeline"


class BrokenFamily(SD1Family):
    name = "broken-family"
    tiny_names = ()

    def detect(self, probe):
        raise RuntimeError("detect broken on purpose")


class FamilyPlugin:
    def __init__(self, *registered) -> None:
        self.registered = registered

    @hookimpl
    def register_families(self, register):
        for family in self.registered:
            register(family)


@pytest.fixture
def plugin_families():
    """Registers the test's families as a third-party plugin for the duration of a test."""
    registered = []

    def add(name: str, *objects) -> None:
        plugin = FamilyPlugin(*objects)
        plugins.pm.register(plugin, name=name)
        plugins._plugins.append(plugins.PluginInfo(name, "test-pkg", "0.1", False))
        registered.append(plugin)

    yield add
    for plugin in registered:
        plugins.pm.unregister(plugin)


@pytest.fixture(scope="module")
def foreign_folder(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SD folder under a pipeline class no built-in family handles."""
    out = tmp_path_factory.mktemp("foreign") / "model"
    shutil.copytree(tiny_model_dir, out)
    index = json.loads((out / "model_index.json").read_text())
    index["_class_name"] = "PluginPipeline"
    (out / "model_index.json").write_text(json.dumps(index))
    return out


def _safetensors(path: Path, keys: list[str]) -> Path:
    from safetensors.torch import save_file

    save_file({k: torch.zeros(1) for k in keys}, str(path))
    return path


# ----------------------------------------------------------------------------- registry


def test_builtin_family_is_a_default_plugin():
    assert "sd1" in families()
    assert plugins.provider_owner("register_families", "sd1") == "family-sd1"
    assert plugins.is_builtin("family-sd1")


def test_plugin_family_through_the_hook(plugin_families, foreign_folder: Path):
    with pytest.raises(SpmctlError, match="no model family handles PluginPipeline"):
        detect(str(foreign_folder))
    plugin_families("test-families", PluginFamily())
    assert detect(str(foreign_folder)).name == "plugin-sd"  # its detect() claims the folder
    model = load_model("tiny-plugin")  # its tiny name
    assert model.family.name == "plugin-sd" and model.denoiser is not None


def test_broken_plugin_family_is_contained_and_named(plugin_families, tiny_model_dir: Path, capsys):
    plugin_families("broken-families", BrokenFamily(), object())
    table = families()
    err = capsys.readouterr().err
    assert "plugin 'broken-families' (test-pkg 0.1): register_families registered object" in err
    assert "not a model family" in err
    assert "broken-family" in table  # the family itself fits the interface...
    assert detect(str(tiny_model_dir)).name == "sd1"  # ...its failing detect() does not stop detection
    err = capsys.readouterr().err
    assert "plugin 'broken-families' (test-pkg 0.1): model family 'broken-family': detect() failed" in err
    assert "detect broken on purpose" in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- detection


def test_detect_each_source_kind(tiny_model_dir: Path, tmp_path: Path, monkeypatch):
    assert probe("tiny").kind == "tiny" and detect("tiny").name == "sd1"
    assert probe(str(tiny_model_dir)).pipeline_class == "StableDiffusionPipeline"
    assert detect(str(tiny_model_dir)).name == "sd1"
    ldm = _safetensors(tmp_path / "sd.safetensors", ["model.diffusion_model.input_blocks.0.0.weight",
                                                      "cond_stage_model.transformer.text_model.x"])
    assert probe(str(ldm)).keys is not None and detect(str(ldm)).name == "sd1"
    mmdit = _safetensors(tmp_path / "sd3.safetensors", ["model.diffusion_model.joint_blocks.0.x.weight"])
    with pytest.raises(SpmctlError, match=r"handles a single-file checkpoint .*pretrained_model.family"):
        detect(str(mmdit))
    # a hub id: its model_index.json read from the local cache only (never downloaded)
    import huggingface_hub.constants

    snapshot = tmp_path / "hub" / "models--someone--model" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "model_index.json").write_text(json.dumps({"_class_name": "SomethingElsePipeline"}))
    (tmp_path / "hub" / "models--someone--model" / "refs").mkdir()
    (tmp_path / "hub" / "models--someone--model" / "refs" / "main").write_text("abc")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert probe("someone/model").pipeline_class == "SomethingElsePipeline"
    with pytest.raises(SpmctlError, match="no model family handles SomethingElsePipeline"):
        detect("someone/model")
    assert detect("someone/not-downloaded").name == "sd1"  # nothing to go on: SD 1.x, as before families


def test_sdxl_is_detected_from_its_folder_and_its_single_file(tmp_path: Path):
    """Without `pretrained_model.family`: a diffusers folder by its pipeline class, Stability's single
    file by its tensor names (SDXL's `conditioner.embedders` beside the UNet's `label_emb`)."""
    folder = tmp_path / "sdxl"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    assert detect(str(folder)).name == "sdxl"
    single = _safetensors(tmp_path / "sd_xl_base_1.0.safetensors", [
        "model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.label_emb.0.0.weight",
        "conditioner.embedders.0.transformer.text_model.x", "conditioner.embedders.1.model.x"])
    assert detect(str(single)).name == "sdxl"


def test_each_tiny_name_belongs_to_its_own_family_only():
    """`builtin:tiny-sdxl` (the source a tiny-SDXL membrane records) once passed SD 1.x's prefix test
    `startswith("builtin:tiny-sd")`: forced to sd1, it built the tiny SD 1.x instead of failing."""
    table = families()
    for tiny, owner in tiny_names().items():
        assert [name for name, family in table.items() if family.is_tiny(tiny)] == [owner], tiny
    assert {"builtin:tiny-sd", "builtin:tiny-sdxl", "tiny-sdxl"} <= set(tiny_names())


def test_forcing_the_family(foreign_folder: Path):
    assert detect(str(foreign_folder), "sd1").name == "sd1"
    model = load_model(str(foreign_folder), family="sd1")  # loads: the files are SD 1.x's
    assert model.family.name == "sd1"


def test_unknown_family_is_one_line(tmp_path: Path):
    cfg = write_train_config(tmp_path / "c.yaml", output_dir=str(tmp_path / "run"))
    result = run_spmctl("train", "-c", str(cfg), "--family", "sd_1", "-q")  # not 'sdl': 'sd3' is as close
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pretrained_model.family 'sd_1': unknown model family" in lines[0]
    assert "did you mean 'sd1'" in lines[0]
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- memory


def _step(checkpointing: bool, precision: str = "float32", source: str = "tiny"):
    """One training step's loss and membrane gradients on a fresh tiny model, and how often the first
    transformer block ran (recomputed in the backward pass under gradient checkpointing)."""
    from spmctl.config.train import PromptSettings
    from spmctl.membrane import MembraneNetwork
    from spmctl.training.objective import SPMObjective
    from spmctl.training.run import _embeds

    model = load_model(source, dtype=precision)
    if checkpointing:
        model.family.enable_gradient_checkpointing(model)
    net = MembraneNetwork.for_model(model)
    net.to(dtype=torch.float32)  # the membrane stays fp32 whatever the base's precision
    gen = torch.Generator().manual_seed(0)
    for p in net.trainable_parameters():
        p.data = torch.randn(p.shape, generator=gen) * 0.1
    settings = PromptSettings(target="cat", positive="cat", neutral="", resolution=64, sampling_batch_size=2)
    objective = SPMObjective(model, net, lambda: model.family.make_scheduler(model, "ddim"), 4)
    embeds = _embeds(model, [settings], 1)[0]
    block = next(m for name, m in model.denoiser.named_modules() if name.endswith("transformer_blocks.0"))
    calls = []
    block.register_forward_pre_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    loss, _ = objective.loss(embeds, torch.Generator().manual_seed(1))
    loss.backward()
    return model, net, loss.item(), [p.grad.clone() for p in net.trainable_parameters()], len(calls)


@pytest.mark.parametrize("source", ["tiny", "tiny-sd3", "tiny-flux"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(source: str):
    # checkpointed first: the membrane kernel's first use (its self-check) then falls in this step
    _, _, loss_ckpt, grads_ckpt, calls_ckpt = _step(True, source=source)
    _, _, loss, grads, calls = _step(False, source=source)
    assert calls_ckpt > calls  # the blocks ran again in the backward pass: checkpointing is on
    assert loss_ckpt == pytest.approx(loss, rel=1e-6)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(grads, grads_ckpt, strict=True))
    assert any(g.abs().sum() > 0 for g in grads)


def test_low_precision_base_trains_an_fp32_membrane():
    model, net, loss, grads, _ = _step(False, "bfloat16")
    assert model.dtype == torch.bfloat16 and model.text_encoder.dtype == torch.bfloat16
    assert {p.dtype for p in net.trainable_parameters()} == {torch.float32}
    assert {g.dtype for g in grads} == {torch.float32}
    assert torch.isfinite(torch.tensor(loss)) and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_training_run_keeps_the_membrane_fp32_and_offloads(tmp_path: Path):
    """What `spmctl train` sets up from the config: bf16 base, fp32 membrane, checkpointing on."""
    from spmctl.config.train import load_train_config
    from spmctl.training.run import TrainingRun

    path = write_train_config(tmp_path / "c.yaml", output_dir=str(tmp_path / "run"), train__precision="bfloat16",
                              train__gradient_checkpointing=True)
    cfg, _ = load_train_config(path)
    run = TrainingRun(cfg, None, True, None, "")
    try:
        run.prepare()
        assert run.model.dtype == torch.bfloat16
        assert {p.dtype for p in run.params} == {torch.float32}
        assert run.model.denoiser.is_gradient_checkpointing
    finally:
        run.close(True)


def test_estimate_refuses_a_run_that_cannot_fit(tmp_path: Path):
    """40960 px: one UNet feature map of the tiny model (3 GiB) fits this machine; one training step's
    activations (about a TiB) do not. Refused before anything is written, in one line."""
    cfg = write_train_config(tmp_path / "c.yaml", output_dir=str(tmp_path / "run"), prompt={"resolution": 40960})
    result = run_spmctl("train", "-c", str(cfg), "-q")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "prompt.resolution = 40960" in lines[0] and "needs about" in lines[0]
    assert "train.gradient_checkpointing" in lines[0]
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_sdxl_estimate_uses_the_coefficients_measured_on_sdxl():
    """SDXL's UNet keeps about twice SD 1.5's activations per latent pixel (benchmarks/memory_peak.py):
    an SDXL run estimated with SD 1.5's coefficients would pass a memory check it then fails."""
    from spmctl.families.memory import PER_LATENT_PIXEL

    sdxl = load_model("tiny-sdxl")
    base = load_model("tiny")
    ratio = PER_LATENT_PIXEL["sdxl"][0] / PER_LATENT_PIXEL["sd15"][0]
    per_pixel = [m.family.peak_memory(m, 1, 64, 64, training=True).activations
                 / m.denoiser.config.block_out_channels[0] for m in (sdxl, base)]
    assert per_pixel[0] / per_pixel[1] == pytest.approx(ratio, rel=0.01)


def test_sdxl_estimate_at_1024_px_is_what_the_backward_keeps(monkeypatch: pytest.MonkeyPatch):
    """The pre-run check's estimate for SDXL base itself (its published configs, built on the meta
    device: exact sizes, no memory) at 1024 px, 5 samples (batch 1 + 4 anchors), bf16: the README's
    38.0 GiB, 9.8 GiB with gradient checkpointing, 8.5 GiB sampling. Its per-pixel coefficient is
    what benchmarks/memory_peak.py counts the backward keeping on those shapes at 256 px, to the few
    % that the 77 text tokens' cross-attention adds at a small size. The earlier coefficient, which
    counted views of the UNet's own weights (a Linear's backward saves `weight.t()`) and tensors saved
    twice as activations, put this at 44.3 GiB; the CPU check on random weights measures below it."""
    from spmctl.families.base import ModelBundle
    from spmctl.families.memory import PER_LATENT_PIXEL

    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    import memory_peak

    spec = memory_peak.SPECS["sdxl"]
    with torch.device("meta"):
        unet = spec.denoiser().to(torch.bfloat16)
        text = tuple(build().to(torch.bfloat16) for build in spec.text)
        vae = spec.vae().to(torch.bfloat16)
    family = families()["sdxl"]
    model = ModelBundle(family, "stabilityai/stable-diffusion-xl-base-1.0", unet, vae, {}, text_encoders=text)

    def gib(**kwargs) -> float:
        return family.peak_memory(model, 5 if kwargs["training"] else 1, 1024, 1024, **kwargs).total / 2**30

    assert gib(training=True) == pytest.approx(38.0, rel=0.02)
    assert gib(training=True, checkpointing=True) == pytest.approx(9.8, rel=0.02)
    assert gib(training=False) == pytest.approx(8.5, rel=0.02)
    counted = memory_peak.saved_activations(spec, 1, 256, torch.bfloat16)
    per_pixel = [counted[k] / (2 * 32 * 32) for k in ("saved", "saved_checkpointed")]
    assert per_pixel == pytest.approx(PER_LATENT_PIXEL["sdxl"], rel=0.08)
