"""Fidelity to the method (issue 19): the default objective is the documented one, `compat: original` is the
original SPM code's arithmetic (its defects included), and identical runs write identical bytes.

The expected losses are restated here from the descriptions, with separate UNet calls, on the tiny
model and fixed draws; only the random draws (k, latents, anchor directions) come from spmctl.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import TESTS, make_spm, run_spmctl, write_train_config

from spmctl.config.train import PromptSettings, load_train_config
from spmctl.membrane import MembraneNetwork
from spmctl.models.loading import make_scheduler
from spmctl.training.objective import Embeds, SPMObjective, random_resolution, sample_anchors
from spmctl.training.original import scheduler_config

MAX_STEPS = 6
SETTINGS = PromptSettings(target="cat", positive="cat", neutral="", resolution=64, sampling_batch_size=4,
                          la_strength=10.0, guidance_scale=1.5)


@pytest.fixture(scope="module")
def setup():
    """The tiny model, a membrane with nonzero weights (so ON differs from OFF), the embeddings."""
    from spmctl.families import load_model
    from spmctl.models.text import encode_prompts

    model = load_model("tiny")
    net = MembraneNetwork(model.unet)
    gen = torch.Generator().manual_seed(3)
    for p in net.trainable_parameters():
        p.data = torch.randn(p.shape, generator=gen) * 0.2
    e = encode_prompts(model.tokenizer, model.text_encoder, ["", "cat", "cat", ""])
    return model, net, Embeds(SETTINGS, *(e[i:i + 1] for i in range(4)))


def objective(model, net, name: str = "ddim", compat: str = "default") -> SPMObjective:
    config = scheduler_config(compat, model.scheduler_config)
    return SPMObjective(model, net, lambda: make_scheduler(name, config), MAX_STEPS, compat)


def eps(model, x: torch.Tensor, t, embeds: torch.Tensor) -> torch.Tensor:
    return model.unet(x, t, encoder_hidden_states=embeds).sample


def restated_loss(model, net, e: Embeds, seed: int, scheduler, original: bool) -> float:
    """The loss of one iteration, written out: the documented objective, or (original) the original code's
    arithmetic as the README's "Differences from the original SPM" states it."""
    s = e.settings
    gen = torch.Generator().manual_seed(seed)
    k = int(torch.randint(1, MAX_STEPS, (1,), generator=gen))
    x = torch.randn((1, 4, 8, 8), generator=gen)  # 64 px, batch 1; DDIM's initial sigma is 1
    scheduler.set_timesteps(MAX_STEPS)
    with torch.no_grad(), net.gated(1.0):  # k steps, membrane ON, CFG 3 on [uncond, target]
        for t in scheduler.timesteps[:k]:
            e_u, e_c = eps(model, torch.cat([x, x]), t, torch.cat([e.unconditional.embeds, e.target.embeds])).chunk(2)
            x = scheduler.step(e_u + 3 * (e_c - e_u), t, x).prev_sample
    scheduler.set_timesteps(1000)
    t = scheduler.timesteps[int(k * 1000 / MAX_STEPS)]
    anchors = sample_anchors(e.target.embeds, s.sampling_batch_size, gen)
    with torch.no_grad(), net.gated(0.0):
        e_pos, e_neu = eps(model, x, t, e.positive.embeds), eps(model, x, t, e.neutral.embeds)
    with net.gated(1.0):
        e_tgt = eps(model, x, t, e.target.embeds)
    erase = F.mse_loss(e_tgt, e_neu - s.guidance_scale * (e_pos - e_neu))
    if not original:  # every anchor against its own latent
        with net.gated(1.0):
            on = eps(model, x.repeat(4, 1, 1, 1), t, anchors)
        with torch.no_grad(), net.gated(0.0):
            off = eps(model, x.repeat(4, 1, 1, 1), t, anchors)
        return float((erase + s.la_strength * F.mse_loss(on, off)).detach())
    # the original: batch [uncond, s1, uncond, s2, ...], latents doubled as for CFG, guidance 1 keeps
    # the second half of the prediction
    batch = torch.cat([torch.cat([e.unconditional.embeds, a[None]]) for a in anchors])
    x_in = torch.cat([x.repeat(4, 1, 1, 1)] * 2)
    with net.gated(1.0):
        u, c = eps(model, x_in, t, batch).chunk(2)
        on = u + 1 * (c - u)
    with torch.no_grad(), net.gated(0.0):
        u, c = eps(model, x_in, t, batch).chunk(2)
        off = u + 1 * (c - u)
    return float((erase + s.la_strength * F.mse_loss(on, off)).detach())


@pytest.mark.parametrize("seed", [0, 5])
def test_default_loss_is_the_documented_objective(setup, seed):
    from diffusers import DDIMScheduler

    model, net, e = setup
    got, terms = objective(model, net).loss(e, torch.Generator().manual_seed(seed))
    expected = restated_loss(model, net, e, seed, DDIMScheduler.from_config(model.scheduler_config), False)
    assert terms["anchor_loss"] > 0 and float(got) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("seed", [0, 5])
def test_compat_loss_is_the_original_arithmetic(setup, seed):
    from diffusers import DDIMScheduler

    model, net, e = setup
    got, _ = objective(model, net, compat="original").loss(e, torch.Generator().manual_seed(seed))
    # the original's own scheduler: these values only, diffusers defaults (steps_offset 0) for the rest
    original = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                             num_train_timesteps=1000, clip_sample=False)
    expected = restated_loss(model, net, e, seed, original, True)
    assert float(got) == pytest.approx(expected, rel=1e-4)
    default = restated_loss(model, net, e, seed, DDIMScheduler.from_config(model.scheduler_config), False)
    assert abs(expected - default) > 1e-3 * abs(default)  # the two procedures are told apart


@pytest.mark.parametrize("name", ["euler_a", "lms"])
def test_training_input_is_scaled_at_each_iterations_own_timestep(setup, name):
    """Bug: the 1000-step scheduler was set once, so euler_a/lms scaled later inputs with a stale sigma."""
    if name == "lms":
        pytest.importorskip("scipy")
    model, net, e = setup
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    hook = model.unet.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append((args[0].detach().clone(), args[1])), with_kwargs=True)

    class Probe(SPMObjective):
        def denoise(self, *args, **kwargs):
            self.x_t = super().denoise(*args, **kwargs)
            return self.x_t

    probe = Probe(model, net, lambda: make_scheduler(name, model.scheduler_config), MAX_STEPS)
    gen = torch.Generator().manual_seed(1)
    try:  # iterate until the depth k (hence the timestep) differs from the first iteration's
        ks = [probe.loss(e, gen)[1]["k"]]
        while ks[-1] == ks[0] and len(ks) < 10:
            seen.clear()
            ks.append(probe.loss(e, gen)[1]["k"])
    finally:
        hook.remove()
    assert ks[-1] != ks[0]
    scaled, t = seen[-2]  # the membrane-OFF call: [positive, neutral, anchors]; its first row is x_t scaled
    fresh = make_scheduler(name, model.scheduler_config)
    fresh.set_timesteps(1000)
    assert torch.allclose(scaled[:1], fresh.scale_model_input(probe.x_t, t), rtol=1e-6)


def test_dynamic_resolution_range():
    s = SETTINGS.model_copy(update={"resolution": 512, "dynamic_resolution": True})
    gen = torch.Generator().manual_seed(0)
    default = {random_resolution(s, gen, 8)[0] for _ in range(300)}
    original = {random_resolution(s, gen, 8, "original")[0] for _ in range(300)}
    assert default == {256, 320, 384, 448, 512}
    assert original == {256, 320, 384, 448}  # the original never draws the full resolution


def test_compat_trains_at_lr_not_unet_lr(tmp_path):
    from spmctl.training.optim import build_optimizer

    cfg, _ = load_train_config(write_train_config(tmp_path / "c.yaml", train__unet_lr=0.5))
    param = [torch.nn.Parameter(torch.zeros(1))]
    assert build_optimizer(param, cfg.train).param_groups[0]["lr"] == 0.5
    assert build_optimizer(param, cfg.train, "original").param_groups[0]["lr"] == cfg.train.lr


def test_original_loop_anchors_the_second_half_of_the_interleaved_batch(setup):
    """benchmarks/original_loop.py restates the original: with 4 anchors its anchoring term compares
    [uncond, s3, uncond, s4], not [s1, s2, s3, s4]."""
    sys.path.insert(0, str(TESTS.parent / "benchmarks"))
    import original_loop

    model, _, e = setup
    sched = make_scheduler("ddim", model.scheduler_config)
    sched.set_timesteps(1000)
    t, x = sched.timesteps[400], torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    anchors = [a[None] for a in sample_anchors(e.target.embeds, 4, torch.Generator().manual_seed(1))]
    batch = torch.cat([torch.cat([e.unconditional.embeds, a]) for a in anchors])
    with torch.no_grad():
        got = original_loop.predict_noise(model.unet, sched, t, x.repeat(4, 1, 1, 1), batch, 1)
        effective = torch.cat([e.unconditional.embeds, anchors[2], e.unconditional.embeds, anchors[3]])
        want = eps(model, x.repeat(4, 1, 1, 1), t, effective)
        every = eps(model, x.repeat(4, 1, 1, 1), t, torch.cat(anchors))
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, every, atol=1e-3)
    assert "second half" in original_loop.__doc__


def test_identical_training_runs_write_identical_bytes(tmp_path):
    files = []
    for run in ("a", "b"):
        cfg = write_train_config(tmp_path / f"{run}.yaml", train__iterations=3, output_dir=str(tmp_path / run))
        result = run_spmctl("train", "-c", str(cfg), "--quiet")
        assert result.returncode == 0, result.stderr
        files.append((tmp_path / run / "cat_last.safetensors").read_bytes())
    assert files[0] == files[1]


def test_cli_train_compat_original(tmp_path):
    cfg = write_train_config(tmp_path / "c.yaml", train__iterations=2, output_dir=str(tmp_path / "run"))
    result = run_spmctl("train", "-c", str(cfg), "--compat", "original", "--quiet")
    assert result.returncode == 0, result.stderr
    import yaml

    assert yaml.safe_load((tmp_path / "run" / "cat_config.yaml").read_text())["compat"] == "original"
    bad = run_spmctl("train", "-c", str(cfg), "--compat", "orig", "--print-config")
    assert bad.returncode == 2 and "compat" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def pndm_model(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model whose own scheduler is PNDM (as SD 1.4's is)."""
    import shutil

    out = tmp_path_factory.mktemp("pndm") / "tiny-pndm"
    shutil.copytree(tiny_model_dir, out)
    path = out / "scheduler" / "scheduler_config.json"
    config = json.loads(path.read_text())
    config.update({"_class_name": "PNDMScheduler", "skip_prk_steps": True})
    path.write_text(json.dumps(config))
    index = json.loads((out / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "PNDMScheduler"]
    (out / "model_index.json").write_text(json.dumps(index))
    return out


def test_model_scheduler_is_the_models_own(pndm_model):
    from diffusers import PNDMScheduler

    from spmctl.families import load_model
    from spmctl.sampling.generate import build_pipeline

    assert isinstance(build_pipeline(load_model(str(pndm_model)), "model").scheduler, PNDMScheduler)


def test_compat_gates_are_the_scores_times_the_factor_unclipped(tiny):
    """Bug: --ft-compat original ignored --facilitate-factor; the original multiplies the max score by it."""
    from spmctl.config.sample import load_sample_config
    from spmctl.membrane import MembraneFile
    from spmctl.sampling.ft import ft_gates
    from spmctl.sampling.run import compute_gates

    model = tiny
    spms = [MembraneFile({}, ["cat"], 1, 1.0)]
    prompts = ["a cat", "a dog"]
    raw = ft_gates(model, prompts, [["cat"]], clip=False)
    cfg, _ = load_sample_config(None, {"ft_compat": "original", "facilitate_factor": 1.5})
    gates, _ = compute_gates(cfg, model, spms, prompts)
    assert torch.allclose(gates, 1.5 * raw) and gates[0, 0] > 1  # unclipped
    cfg, _ = load_sample_config(None, {"compat": "original", "facilitate_factor": 1.5, "multiplier": [0.5]})
    assert compute_gates(cfg, model, spms, prompts)[0].tolist() == [[0.75], [0.75]]  # fixed gates too
    default, _ = load_sample_config(None, {"facilitate_factor": 1.5})
    assert compute_gates(default, model, spms, prompts)[0][0, 0] == 1.0  # clipped by default


def test_compat_config_alias_and_scheduler():
    from spmctl.config.sample import load_sample_config

    alias, _ = load_sample_config(None, {"ft_compat": "original"})
    assert (alias.compat, alias.noise_scheduler) == ("original", "model")
    named, _ = load_sample_config(None, {"compat": "original", "noise_scheduler": "ddim"})
    assert (named.ft_compat, named.noise_scheduler) == ("original", "ddim")
    assert load_sample_config(None, {})[0].noise_scheduler == "ddim"


@pytest.mark.slow
def test_cli_sample_compat_uses_the_models_scheduler(tmp_path, pndm_model):
    from PIL import Image

    spm = make_spm(tmp_path / "cat.safetensors", ["cat"], seed=1)
    common = ["sample", "-m", str(pndm_model), "--spm", str(spm), "-p", "a cat", "--steps", "3",
              "-W", "64", "-H", "64", "--device", "cpu", "--quiet", "--compat", "original"]
    records = {}
    for name, extra in (("model", []), ("ddim", ["--noise-scheduler", "ddim"])):
        result = run_spmctl(*common, "-o", str(tmp_path / name), *extra)
        assert result.returncode == 0, result.stderr
        records[name] = json.loads((tmp_path / name / "manifest.jsonl").read_text().splitlines()[0])
    assert records["model"]["noise_scheduler"] == "model"
    assert records["model"]["gates"] == records["ddim"]["gates"]
    images = [Image.open(tmp_path / name / records[name]["file"]).tobytes() for name in records]
    assert images[0] != images[1]  # the model's PNDM, not spmctl's default DDIM
