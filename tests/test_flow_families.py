"""SD3 and FLUX (flow-matching MMDiTs) as model families, on their built-in tiny models.

Membranes are trained once per family by spmctl's own trainer (session fixture) and shared by the
tests: the objective, FT gates, batched sampling, export to diffusers' `load_lora_weights`, DDP,
resume and sweeps.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN, run_spmctl, write_train_config
from helpers_shards import assert_shards_average_to_the_batch, trained_looking
from test_sample import SIZE, STEPS, generate

from spmctl.config.train import load_train_config
from spmctl.membrane import load_membrane

FAMILIES = ["sd3", "flux"]
GUIDANCE = {"sd3": 5.0, "flux": 3.5}  # SD3: classifier-free guidance; FLUX.1-dev: its guidance embedding


def flow_config(family: str, **sections) -> dict:
    cfg = json.loads(json.dumps(TINY_TRAIN))
    cfg["pretrained_model"] = {"ckpt_path": f"tiny-{family}"}
    cfg["train"].update({"iterations": 30, "max_denoising_steps": 8})
    for key, value in sections.items():  # a dict is merged into its section, anything else replaces
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


def train(family: str, out: Path, **sections) -> Path:
    from spmctl.training.run import run_training

    cfg = write_train_config(out.with_suffix(".yaml"), flow_config(family, output_dir=str(out), **sections))
    return run_training(load_train_config(cfg)[0], quiet=True)


@pytest.fixture(scope="session")
def flow_trained(tmp_path_factory: pytest.TempPathFactory):
    """family -> a "cat" membrane trained on the tiny model (once per session)."""
    made: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in made:
            made[family] = train(family, tmp_path_factory.mktemp(f"flow-{family}") / "out")
        return made[family]

    return get


@pytest.fixture(scope="module", params=FAMILIES)
def flow(request):
    from spmctl.families import load_model

    return request.param, load_model(f"tiny-{request.param}")


# ------------------------------------------------------------------------------- the family
def test_detected_from_a_folder_and_membranes_on_the_blocks_linears(flow, tmp_path):
    from spmctl.families import detect

    name, model = flow
    model.family.pipeline(model, model.family.make_scheduler(model, "model")).save_pretrained(tmp_path / "m")
    assert detect(str(tmp_path / "m")).name == name
    paths = [path for path, *_ in model.family.membrane_targets(model.denoiser)]
    rest = {p.split(".", 2)[2] for p in paths}
    both_streams = {"attn.to_q", "attn.to_k", "attn.to_v", "attn.add_k_proj", "attn.add_v_proj", "ff.net.2",
                    "ff_context.net.0.proj"}
    assert both_streams <= rest
    if name == "flux":  # single-stream blocks: fused attention + MLP
        assert {"proj_mlp", "proj_out"} <= rest and any(p.startswith("single_transformer_blocks.") for p in paths)
    assert {"norm1.linear", "norm1_context.linear"} <= rest  # the adaLN modulation (see flow.MODULATION)
    assert not any(p.startswith(("x_embedder", "context_embedder", "norm_out", "proj_out")) for p in paths)


def test_a_named_epsilon_sampler_is_not_ignored_silently(flow):
    """SD3/FLUX always sample with their flow-matching Euler scheduler: a sampler the user named
    (here LMS) gets a warning saying so; the defaults (ddim, model) stay quiet."""
    import warnings

    name, model = flow
    with pytest.warns(UserWarning, match=f"'lms' does not apply to {name}"):
        sched = model.family.make_scheduler(model, "lms")
    assert type(sched).__name__ == "FlowMatchEulerDiscreteScheduler"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.family.make_scheduler(model, "ddim")
        model.family.make_scheduler(model, "model")


def test_training_moves_the_velocity_toward_the_erase_target_while_anchors_stay(flow, flow_trained):
    """At x_t drawn as training draws it, the trained membrane's velocity for "cat" is closer to
    v_neu − g·(v_pos − v_neu) (g = 1, neutral "") than the base model's, and random anchors barely move."""
    from spmctl.membrane import MembraneNetwork

    name, model = flow
    family = model.family
    network = MembraneNetwork.for_model(model)
    network.load_state_dict_for(0, load_membrane(flow_trained(name)).tensors)
    gen = torch.Generator().manual_seed(21)
    cond = family.encode(model, ["cat", ""])
    target_cond, neutral = cond[0], cond[1]
    before = after = anchored = 0.0
    try:
        with torch.no_grad():
            for k in (2, 4, 6):
                latents = family.initial_latents(model, family.make_scheduler(model, "model"), 2, SIZE, SIZE, gen,
                                                 model.device, model.dtype)
                with torch.inference_mode(), network.gated(0.0):
                    x_k = family.partial_denoise(model, network, family.make_scheduler(model, "model"), latents,
                                                 neutral, target_cond, k, 8, gen)
                t, x = family.training_input(model, family.make_scheduler(model, "model"), x_k.clone(), k, 8)
                anchors = family.sample_anchors(target_cond, 2, gen)
                with network.gated(0.0):
                    v_pos = family.predict(model, x, t, target_cond.expand(2))
                    v_neu = family.predict(model, x, t, neutral.expand(2))
                    v_anchor_off = family.predict(model, x, t, anchors)
                with network.gated(1.0):
                    v_tgt = family.predict(model, x, t, target_cond.expand(2))
                    v_anchor_on = family.predict(model, x, t, anchors)
                erase_to = v_neu - 1.0 * (v_pos - v_neu)
                before += float(((v_pos - erase_to) ** 2).mean())  # membrane off: v_tgt is v_pos
                after += float(((v_tgt - erase_to) ** 2).mean())
                anchored += float(((v_anchor_on - v_anchor_off) ** 2).mean())
    finally:
        network.detach()
    assert after < 0.8 * before, (before, after)
    assert anchored < 0.02 * before, (before, anchored)


def test_partial_denoising_is_the_pipelines_own_sampling_stopped_at_k(flow):
    """x_k is what the family's diffusers pipeline has after k of its steps (its shifted schedule; SD3
    with guidance 3, FLUX at guidance embedding 3.5, FluxPipeline's default); training then evaluates
    it at the pipeline's k-th timestep, and its prediction is the pipeline's velocity for the target."""
    from spmctl.families.flux.family import pack, unpack
    from spmctl.membrane import MembraneNetwork

    name, model = flow
    family = model.family
    steps, k = 6, 4
    latents = family.initial_latents(model, family.make_scheduler(model, "model"), 1, SIZE, SIZE,
                                      torch.Generator().manual_seed(3), model.device, model.dtype)
    calls = []

    def record(module, args, kwargs, out):
        calls.append((kwargs["hidden_states"].clone(), kwargs["timestep"].clone(), out[0].clone()))

    hook = model.denoiser.register_forward_hook(record, with_kwargs=True)
    try:
        pipe = family.pipeline(model, family.make_scheduler(model, "model"))
        pipe("cat", latents=pack(latents) if name == "flux" else latents, num_inference_steps=steps,
             guidance_scale=3.5 if name == "flux" else 3.0, height=SIZE, width=SIZE,
             max_sequence_length=family.t5_length(model), output_type="latent")
    finally:
        hook.remove()
    cond = family.encode(model, ["", "cat"])
    network = MembraneNetwork.for_model(model)  # fresh: changes nothing
    try:
        with torch.inference_mode():
            x_k = family.partial_denoise(model, network, family.make_scheduler(model, "model"), latents,
                                         cond[0], cond[1], k, steps, torch.Generator())
        t, x_in = family.training_input(model, family.make_scheduler(model, "model"), x_k.clone(), k, steps)
        v = family.predict(model, x_in, t, cond[1])
    finally:
        network.detach()
    hidden, timestep, out = calls[k]
    side = SIZE // model.vae_scale_factor
    if name == "flux":  # packed tokens, timestep / 1000, one pass per step (no unconditional branch)
        hidden, out, timestep = unpack(hidden, side, side), unpack(out, side, side), timestep * 1000
    else:  # classifier-free guidance: [unconditional, conditional]
        hidden, out = hidden[1:], out[1:]
    torch.testing.assert_close(x_k, hidden, rtol=1e-4, atol=1e-5)
    assert float(t) == pytest.approx(float(timestep[0]), rel=1e-5)
    torch.testing.assert_close(v, out, rtol=1e-4, atol=1e-5)


def test_anchors_are_drawn_per_text_encoder_part(flow):
    name, model = flow
    family = model.family
    target = family.encode(model, ["a photo of a cat"])
    anchors = family.sample_anchors(target, 64, torch.Generator().manual_seed(0))
    assert anchors.embeds.shape[0] == anchors.pooled.shape[0] == 64
    regions = family.text_regions(target)
    if name == "sd3":  # CLIP-L + CLIP-G (32 + 48 wide) over 77 tokens, then T5's tokens
        assert regions == [(slice(0, 77), slice(0, 80)), (slice(77, None), slice(None))]
        assert (anchors.embeds[:, :77, 80:] == 0).all()  # the pipeline's zero padding stays zero
    parts = [(anchors.embeds[:, rows, cols], target.embeds[:, rows, cols]) for rows, cols in regions]
    for drawn, own in [*parts, (anchors.pooled, target.pooled)]:
        ratio = drawn.flatten(1).norm(dim=1) / own.flatten(1).norm()
        assert float(ratio.min()) >= 0.8 and float(ratio.max()) <= 1.2  # each part at its own norm


# ---------------------------------------------------------------------------- FT and sampling
def test_ft_gates_the_concept_gets_one(flow):
    from spmctl.sampling.ft import ft_gates

    name, model = flow
    gates = ft_gates(model, ["cat", "a photo of a cat", "a red car on a street"], [["cat"]])
    assert gates[0, 0] == pytest.approx(1.0) and gates[1, 0] == pytest.approx(1.0)
    assert gates[2, 0] < 1.0
    # the gates read off a prompt's generation conditioning equal those computed from its text
    texts = ["a photo of a cat", "a dog"]
    from_cond = model.family.gate_embeds_of(model, model.family.encode(model, texts), 1)
    if from_cond is not None:
        torch.testing.assert_close(from_cond, model.family.gate_features(model, texts).embeds)


def test_gates_zero_give_exactly_the_base_model(flow, flow_trained):
    name, model = flow
    prompts = ["a cat", "a red car"]
    base = generate(model, [], prompts, torch.zeros(2, 0), guidance=GUIDANCE[name])
    off = generate(model, [flow_trained(name)], prompts, torch.zeros(2, 1), guidance=GUIDANCE[name])
    on = generate(model, [flow_trained(name)], prompts, torch.ones(2, 1), guidance=GUIDANCE[name])
    assert np.array_equal(base, off)
    assert np.abs(base - on).max() > 1e-3  # the membrane does something when on


def test_a_batch_with_different_gates_equals_one_prompt_at_a_time(flow, flow_trained):
    name, model = flow
    prompts, gates = ["a cat", "a red car", "a cat"], torch.tensor([[1.0], [0.3], [0.0]])
    spm = [flow_trained(name)]
    batched = generate(model, spm, prompts, gates, seeds=[5, 6, 7], guidance=GUIDANCE[name])
    alone = generate(model, spm, prompts, gates, seeds=[5, 6, 7], guidance=GUIDANCE[name], batch=False)
    np.testing.assert_allclose(batched, alone, atol=2e-5)
    gated = generate(model, spm, prompts[:1], gates[2:], seeds=[5], guidance=GUIDANCE[name])
    assert np.abs(batched[0] - gated[0]).max() > 1e-3  # same prompt and seed, other gate: differs


# ---------------------------------------------------------------- export -> diffusers pipeline
@pytest.mark.slow
def test_cli_sample_export_and_load_lora_weights_give_the_same_image_on_flux(flow_trained, tmp_path):
    """The whole path through the installed CLI (SD3's export is checked in-process above)."""
    from PIL import Image

    from spmctl.families import load_model

    name = "flux"
    spm = flow_trained(name)
    out = tmp_path / "samples"
    env = {"OMP_NUM_THREADS": "1"}
    made = run_spmctl("sample", "-m", f"tiny-{name}", "--spm", str(spm), "--multiplier", "0.8", "-p", "a cat",
                      "--steps", str(STEPS), "-W", str(SIZE), "-H", str(SIZE), "-g", str(GUIDANCE[name]),
                      "--seed", "11", "-o", str(out), "-q", env=env)
    assert made.returncode == 0, made.stderr
    record = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    ours = np.asarray(Image.open(out / record["file"]), dtype=np.float32) / 255

    lora = tmp_path / "lora.safetensors"
    done = run_spmctl("export", "lora", str(spm), "-o", str(lora), "-q", env=env)
    assert done.returncode == 0, done.stderr

    model = load_model(f"tiny-{name}")
    pipe = model.family.pipeline(model, model.family.make_scheduler(model, "model"))
    pipe.load_lora_weights(str(lora), adapter_name="spm")
    pipe.set_adapters(["spm"], [0.8])
    theirs = pipe("a cat", num_inference_steps=STEPS, width=SIZE, height=SIZE, guidance_scale=GUIDANCE[name],
                  max_sequence_length=model.family.t5_length(model),
                  generator=torch.Generator().manual_seed(11), output_type="np").images[0]
    assert np.abs(theirs - ours).max() <= 1.5 / 255  # the PNG's 8-bit rounding
    pipe.set_adapters(["spm"], [0.0])
    base = pipe("a cat", num_inference_steps=STEPS, width=SIZE, height=SIZE, guidance_scale=GUIDANCE[name],
                max_sequence_length=model.family.t5_length(model),
                generator=torch.Generator().manual_seed(11), output_type="np").images[0]
    assert np.abs(base - ours).max() > 3 / 255  # the LoRA is what made the difference

    cost = run_spmctl("eval", "cost", str(spm.parent), str(out), "-l", "train,sample", "-o", str(tmp_path / "r"))
    assert cost.returncode == 0, cost.stderr
    table = json.loads((tmp_path / "r" / "results.json").read_text())["results"]["cost"]["table"]
    assert table["train"]["adapter_mib"] > 0 and table["sample"]["spms"] == 1


def test_merged_export_loads_in_the_pipeline_at_its_strength(flow, flow_trained, tmp_path):
    """`export merge` writes the family's layout too: diffusers' pipeline applies it as spmctl does."""
    from spmctl.export.lora import Weighted, export_merged

    name, model = flow
    spm = flow_trained(name)
    lora = export_merged([Weighted(spm, 0.5), Weighted(spm, 0.25)], tmp_path / "merged.safetensors")
    ours = generate(model, [spm], ["a cat"], torch.tensor([[0.75]]), seeds=[4], guidance=GUIDANCE[name])
    pipe = model.family.pipeline(model, model.family.make_scheduler(model, "model"))
    pipe.load_lora_weights(str(lora), adapter_name="merged")
    try:
        theirs = pipe("a cat", num_inference_steps=STEPS, width=SIZE, height=SIZE, guidance_scale=GUIDANCE[name],
                      max_sequence_length=model.family.t5_length(model), generator=torch.Generator().manual_seed(4),
                      output_type="np").images
    finally:
        pipe.unload_lora_weights()
    np.testing.assert_allclose(theirs, ours, atol=2e-4)


# ------------------------------------------------------------------- DDP, resume and sweeps
def test_shards_average_to_the_full_batch_gradient(flow):
    """What DDP relies on, for the flow objective: the ranks' gradients, averaged, are the batch's."""
    from spmctl.membrane import MembraneNetwork
    from spmctl.training.objective import SPMObjective
    from spmctl.training.prompts import resolve_prompt_settings
    from spmctl.training.run import _embeds

    name, model = flow
    cfg = load_train_config(None, flow_config(name, prompt={"batch_size": 2, "sampling_batch_size": 4}))[0]
    embeds = _embeds(model, resolve_prompt_settings(cfg), 1)[0]
    network = MembraneNetwork.for_model(model)
    params = network.trainable_parameters()
    torch.manual_seed(0)
    trained_looking(params)
    objective = SPMObjective(model, network, lambda: model.family.make_scheduler(model, "model"), 4)
    try:
        assert_shards_average_to_the_batch(objective, embeds, params)
    finally:
        network.detach()


@pytest.mark.slow
def test_ddp_over_two_processes_matches_one_process_on_flux(tmp_path):
    from spmctl.training.run import run_training

    sections = {"train": {"optimizer_type": "SGD", "lr": 10.0, "iterations": 4, "max_denoising_steps": 4},
                "prompt": {"batch_size": 2, "sampling_batch_size": 4}}
    one = write_train_config(tmp_path / "one.yaml", flow_config("flux", output_dir=str(tmp_path / "one"), **sections))
    reference = load_membrane(run_training(load_train_config(one)[0], quiet=True)).tensors
    two = write_train_config(tmp_path / "two.yaml", flow_config("flux", output_dir=str(tmp_path / "two"), **sections))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "spmctl", "train", "-c", str(two), "--ddp", "--quiet"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    got = load_membrane(tmp_path / "two" / "cat_last.safetensors").tensors
    assert max(float(v.abs().max()) for k, v in reference.items() if "lora_up" in k) > 1e-4  # it trained
    for key, value in reference.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=1e-5, msg=key)


def test_resume_continues_to_the_same_weights_on_flux(tmp_path):
    straight = load_membrane(train("flux", tmp_path / "straight", train={"iterations": 6},
                                   save={"per_steps": 3})).tensors
    cut = tmp_path / "cut"
    train("flux", cut, train={"iterations": 3}, save={"per_steps": 3})
    resumed = load_membrane(train("flux", cut, train={"iterations": 6}, save={"per_steps": 3}, resume=True)).tensors
    log = [json.loads(line)["step"] for line in (cut / "cat_log.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3, 4, 5, 6]
    for key, value in straight.items():
        torch.testing.assert_close(resumed[key], value, rtol=1e-5, atol=1e-7, msg=key)


def test_sweep_trains_each_concept_on_flux(tmp_path):
    from spmctl.distributed.launch import train_scaled
    from spmctl.distributed.sweep import SweepSpec
    from spmctl.distributed.sweep_state import SWEEP_FILE

    path = write_train_config(tmp_path / "c.yaml", flow_config("flux", output_dir=str(tmp_path / "out"),
                                                              train={"iterations": 2}))
    assert train_scaled(load_train_config(path)[0], SweepSpec(names="cat,a red dog"), quiet=True) == 0
    entries = json.loads((tmp_path / "out" / SWEEP_FILE).read_text())["concepts"]
    assert {n: e["status"] for n, e in entries.items()} == {"cat": "done", "a red dog": "done"}
    dog = load_membrane(tmp_path / "out" / "a_red_dog" / "a_red_dog_last.safetensors")
    assert dog.concepts == ["a red dog"] and dog.model_family == "flux"
