"""Images per second: plain diffusers vs. spmctl FT (batched) vs. the original one-prompt-at-a-time FT.

All three run in this one process, on the same model, prompts, seeds, steps and size:

- plain:    a diffusers StableDiffusionPipeline, no membrane, `--batch-size` prompts per call;
- spmctl:   two membranes attached, FT gates scored for every prompt (timed), then the same batches
            with one (B, K) gate tensor per call;
- original: the original SPM inference procedure, restated: for each prompt alone, encode it, score it
            against every concept, take each membrane's max score as its multiplier, build one adapter
            by summing multiplier x (every tensor of every membrane), load it, and generate that prompt
            by itself (batch 1).

The membranes' concepts are encoded once, as `spmctl sample` does once per run, and that one-time
cost is timed and printed separately: it does not grow with the number of prompts, and counting it
against an 8-prompt run would make a 12-layer text encoder look like a per-batch cost.

    python benchmarks/bench_sample.py [--model tiny] [--prompts 8] [--batch-size 8] [--steps 10]
                                      [--size 64] [--repeats 7] [--runs 2] [--threads 1]
                                      [--out bench_sample.json]

Prints the images/s of each and the ratios; FT should cost at most ~10% over plain at the same batch size.
The overhead is the median over rounds of FT/plain, measured back to back in alternating order.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

PROMPTS = [
    "a cat on a chair",
    "a red car in the city",
    "a dog in the garden",
    "a horse at the beach",
    "a portrait of a woman",
    "a house by the river",
    "an apple on a table",
    "a bird in the sky",
    "a boat on the sea",
    "a mountain at sunset",
    "a child with a dog",
    "a city street at night",
]


def sd15_shaped_model():
    """Random weights in SD 1.x's shapes (UNet 320-1280 channels, 768-d CLIP text encoder), built from
    configs: no download. Adapter cost relative to the base depends on the layer widths, and the
    tiny model's 32-wide layers overstate it; this shows the real-model ratio."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from spmctl.families import ModelBundle, get_family
    from spmctl.models.tiny import SCHEDULER_CONFIG, build_tiny_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tiny_tokenizer()
    unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8).eval()  # defaults: SD 1.x
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
    ).eval()
    ids = tokenizer.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"])
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            bos_token_id=ids[0],
            eos_token_id=ids[1],
            pad_token_id=ids[1],
        )
    ).eval()
    for part in (unet, vae, text):
        part.requires_grad_(False)
    return ModelBundle(get_family("sd1"), "random weights, SD 1.x shapes", unet, vae, dict(SCHEDULER_CONFIG),
                       (tokenizer,), (text,))


def save_sd15_shaped(folder: str | Path, dtype: str = "float16", device: str = "cpu") -> Path:
    """sd15_shaped_model() as a diffusers folder, for benchmarks that load a model by path (bench_train,
    gpu_check.sh): `python -c "import bench_sample as b; b.save_sd15_shaped('m')"` in benchmarks/.
    `device="cuda"` draws the random weights there (seconds, against minutes on a busy CPU)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from spmctl.models.loading import torch_dtype

    with torch.device(device):
        model = sd15_shaped_model()
    pipe = StableDiffusionPipeline(
        vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, unet=model.unet,
        scheduler=DDIMScheduler.from_config(model.scheduler_config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    pipe.to(dtype=torch_dtype(dtype)).save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def make_membranes(unet, folder: Path) -> list[Path]:
    from spmctl.membrane import MembraneNetwork, save_membrane

    paths = []
    for i, concepts in enumerate((["cat"], ["dog", "horse"])):
        net = MembraneNetwork(unet, rank=1)
        gen = torch.Generator().manual_seed(i)
        tensors = {
            k: (torch.randn(v.shape, generator=gen) * 0.1 if k.endswith(".weight") else v)
            for k, v in net.state_dict_for(0).items()
        }
        net.detach()
        paths.append(
            save_membrane(folder / f"m{i}.safetensors", tensors, prompts=concepts, rank=1, alpha=1.0)
        )
    return paths


def timed(fn, runs: int) -> float:
    """Seconds of the fastest of `runs` runs after a warm-up (kernel build, allocator, caches): on a
    shared machine the slower runs measure the neighbours as much as the code."""
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny", help="a model spmctl loads, or 'sd15-shaped' (random)")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7, help="paired plain/FT rounds")
    parser.add_argument("--runs", type=int, default=2, help="timed runs per measurement (the fastest counts)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--out", default="bench_sample.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from spmctl.families import load_model
    from spmctl.sampling.ft import concept_bank, concept_scores, membrane_gates
    from spmctl.sampling.generate import ImageSampler, Job, build_pipeline
    from spmctl.sampling.stack import MembraneStack, load_spms

    if args.model == "sd15-shaped":
        from spmctl.models.loading import torch_dtype

        model = sd15_shaped_model()
        for part in (model.unet, model.vae, model.text_encoder):
            part.to(device=args.device, dtype=torch_dtype(args.precision))
    else:
        model = load_model(args.model, dtype=args.precision, device=args.device)
    prompts = [PROMPTS[i % len(PROMPTS)] + ("" if i < len(PROMPTS) else f" {i}") for i in range(args.prompts)]
    jobs = [Job(p, 100 + i, 0, 7.5, args.size, args.size, i) for i, p in enumerate(prompts)]
    batches = [jobs[i : i + args.batch_size] for i in range(0, len(jobs), args.batch_size)]
    generate = ImageSampler(model, build_pipeline(model), steps=args.steps)
    folder = Path(tempfile.mkdtemp(prefix="bench_sample_"))
    spms = load_spms([str(p) for p in make_membranes(model.unet, folder)])

    def plain() -> None:
        for batch in batches:
            generate(batch)

    concepts = [s.concepts for s in spms]
    start = time.perf_counter()
    bank = concept_bank(model, concepts)
    t_bank = time.perf_counter() - start

    def gates_for(texts: list[str], embeds=None) -> torch.Tensor:
        scores = concept_scores(model, texts, bank, prompt_embeds=embeds)
        return membrane_gates(scores, bank)

    def spmctl_ft() -> None:
        # as `spmctl sample` does: the prompts' conditioning serves both the gates and generation
        cond = generate.embeds(prompts)
        gates = gates_for(prompts, model.family.gate_embeds_of(model, cond, generate.clip_skip))
        for batch in batches:
            stack.set_gates(gates[[j.row for j in batch]])
            generate(batch)

    # Plain and FT alternate, round by round, and their order flips every round (plain-FT, FT-plain,
    # ...): on a shared machine, load from elsewhere and clock changes then hit both alike instead of
    # whichever always runs second. The overhead is the median of each round's FT/plain ratio (the
    # two measurements of a round are seconds apart); images/s are from the fastest of each.
    def run_ft() -> float:
        nonlocal stack
        stack = MembraneStack(model, spms)
        try:
            return timed(spmctl_ft, args.runs)
        finally:
            stack.close()

    stack = None
    plain_times, ft_times = [], []
    for round_ in range(args.repeats):
        if round_ % 2:
            ft_times.append(run_ft())
            plain_times.append(timed(plain, args.runs))
        else:
            plain_times.append(timed(plain, args.runs))
            ft_times.append(run_ft())
    t_plain, t_ft = min(plain_times), min(ft_times)
    overhead = statistics.median(f / p for f, p in zip(ft_times, plain_times, strict=True)) - 1.0

    single = MembraneStack(model, spms[:1])  # the original's one adapter, rebuilt per prompt

    def original() -> None:
        for job in jobs:
            g = gates_for([job.prompt])[0]  # encodes the prompt by itself
            weighted = {
                k: sum(float(g[i]) * s.tensors[k] for i, s in enumerate(spms)) for k in spms[0].tensors
            }
            for key in (k for k in weighted if k.endswith(".alpha")):
                weighted[key] = spms[0].tensors[key]  # the original's scale stays the first file's
            single.network.load_state_dict_for(0, weighted)
            single.set_gates(1.0)
            generate([job])

    t_orig = timed(original, args.runs)
    single.close()

    n = len(jobs)
    result = {
        "model": model.source,
        "device": args.device,
        "precision": args.precision,
        "threads": torch.get_num_threads(),
        "prompts": n,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "size": args.size,
        "images_per_second": {
            "plain_diffusers": n / t_plain,
            "spmctl_ft_batched": n / t_ft,
            "original_ft_one_at_a_time": n / t_orig,
        },
        "ft_overhead_vs_plain": overhead,
        "ft_overhead_vs_plain_fastest_runs": t_ft / t_plain - 1.0,
        "round_seconds": {"plain": plain_times, "spmctl_ft": ft_times},
        "speedup_vs_original": t_orig / t_ft,
        "concept_encoding_seconds_once_per_run": t_bank,
    }
    for name, ips in result["images_per_second"].items():
        print(f"{name:28s} {ips:8.2f} images/s")
    ratios = sorted(f / p for f, p in zip(ft_times, plain_times, strict=True))
    print(
        f"FT overhead over plain diffusers (same batch): {100 * overhead:+.1f}% "
        f"(median of {args.repeats} paired rounds, which ranged {100 * (ratios[0] - 1):+.1f}% to "
        f"{100 * (ratios[-1] - 1):+.1f}%; fastest runs: {100 * (t_ft / t_plain - 1):+.1f}%)"
    )
    print(f"batched FT vs. the original one-at-a-time:     {result['speedup_vs_original']:.2f}x faster")
    print(f"FT concept encoding, once per run (not above):  {1e3 * t_bank:.1f} ms")
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
