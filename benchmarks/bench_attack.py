"""Attacked prompts per hour at a fixed budget: spmctl (batched) vs. the reference, one prompt at a time.

Both run in this one process on the same model, membrane, prompts and budget (`--attack-steps`
steps of `--tokens` tokens, or generations of a `--population` for Ring-A-Bell):

- spmctl:    the engine `spmctl attack` runs, `--batch-size` prompts per step, FT gates of every
             prompt from its own hidden states against concepts encoded once;
- reference: the reference procedure restated, one prompt at a time:
             unlearndiffatk: per step, project the prompt's continuous tokens onto the nearest entry
             of the whole vocabulary, encode the prompt, score its FT gate the way the original SPM
             inference does (encode the prompt and the concepts, take the max), noise the target,
             one UNet pass at batch 1, backward, torch.optim.Adam step;
             ring-a-bell: every individual's fitness in its own text-encoder call (batch 1).
Judging and image making are left out of both (they cost the same per prompt either way).

    python benchmarks/bench_attack.py [--method unlearndiffatk|ring-a-bell] [--prompts 8]
        [--batch-size 8] [--attack-steps 10] [--population 40] [--rounds 5] [--out bench_attack.json]

Each round times both, in alternating order; the ratio is the median over rounds of
spmctl prompts/hour ÷ reference prompts/hour, printed with its min and max.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

PROMPTS = ["a cat on a chair", "a red car in the city", "a dog in the garden", "a horse at the beach",
           "a portrait of a woman", "a house by the river", "an apple on a table", "a bird in the sky",
           "a boat on the sea", "a mountain at sunset", "a child with a dog", "a city street at night"]


def make_membrane(unet, folder: Path) -> Path:
    from spmctl.membrane import MembraneNetwork, save_membrane

    net = MembraneNetwork(unet, rank=1)
    gen = torch.Generator().manual_seed(0)
    tensors = {k: (torch.randn(v.shape, generator=gen) * 0.1 if k.endswith(".weight") else v)
               for k, v in net.state_dict_for(0).items()}
    net.detach()
    return save_membrane(folder / "cat.safetensors", tensors, prompts=["cat"], rank=1, alpha=1.0)


def setup(args, folder: Path):
    from spmctl.attack.config import load_attack_config
    from spmctl.attack.run import Attack, build_context, plan_items
    from spmctl.families import load_model
    from spmctl.sampling.stack import MembraneStack, load_spms

    model = load_model(args.model, device=args.device)
    path = make_membrane(model.unet, folder)
    prompts = (PROMPTS * (args.prompts // len(PROMPTS) + 1))[: args.prompts]
    cfg, _ = load_attack_config(None, {
        "method": args.method, "model": args.model, "spms": [str(path)], "prompts": prompts, "concept": "nudity",
        "width": args.size, "height": args.size, "attack_steps": args.attack_steps, "tokens": args.tokens,
        "population": args.population, "batch_size": args.batch_size, "device": args.device})
    spms = load_spms(cfg.spms)
    stack = MembraneStack(model, spms)
    ctx = build_context(cfg, model, spms, stack)
    attack = Attack(ctx, folder, None, quiet=True)  # type: ignore[arg-type]
    return cfg, model, spms, stack, ctx, attack, plan_items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="unlearndiffatk", choices=["unlearndiffatk", "ring-a-bell"])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--attack-steps", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=5)
    parser.add_argument("--population", type=int, default=40)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="bench_attack.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        cfg, model, spms, stack, ctx, attack, plan_items = setup(args, Path(tmp))
        x0_shape = (1, 4, args.size // model.vae_scale_factor, args.size // model.vae_scale_factor)

        def fresh_items():
            items = plan_items(cfg, spms)
            for i, it in enumerate(items):
                it.x0 = torch.randn(x0_shape, generator=torch.Generator().manual_seed(i)).to(model.unet.device)
            attack.hidden(items)
            return items

        def spmctl_run() -> None:
            from spmctl.attack.run import method_module

            items = fresh_items()
            for start in range(0, len(items), args.batch_size):
                batch = items[start : start + args.batch_size]
                engine = method_module(cfg.method).engine(ctx, batch)
                for _ in range(args.attack_steps):
                    engine.step(batch)

        reference = reference_unlearndiffatk if args.method == "unlearndiffatk" else reference_ring_a_bell

        def reference_run() -> None:
            reference(ctx, fresh_items(), args)

        rounds = []
        spmctl_run(), reference_run()  # warm-up
        for r in range(args.rounds):
            order = [("spmctl", spmctl_run), ("reference", reference_run)]
            times = {}
            for name, fn in order if r % 2 == 0 else order[::-1]:
                start = time.perf_counter()
                fn()
                times[name] = time.perf_counter() - start
            rounds.append(times)
        stack.close()
    per_hour = {k: [args.prompts * 3600 / t[k] for t in rounds] for k in ("spmctl", "reference")}
    ratios = [s / r for s, r in zip(per_hour["spmctl"], per_hour["reference"], strict=True)]
    result = {
        "method": args.method, "model": args.model, "device": args.device, "prompts": args.prompts,
        "batch_size": args.batch_size, "attack_steps": args.attack_steps, "tokens": args.tokens,
        "population": args.population, "threads": args.threads,
        "prompts_per_hour": {k: statistics.median(v) for k, v in per_hour.items()},
        "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
        "rounds": rounds,
    }
    print(f"{args.method}: spmctl {result['prompts_per_hour']['spmctl']:.0f} prompts/h, reference "
          f"{result['prompts_per_hour']['reference']:.0f} prompts/h; ratio {result['ratio_median']:.2f}x "
          f"(min {result['ratio_min']:.2f}, max {result['ratio_max']:.2f}, {args.rounds} rounds)")
    Path(args.out).write_text(json.dumps(result, indent=2))


def reference_unlearndiffatk(ctx, items, args) -> None:
    """The reference's loop per prompt (batch 1, torch Adam, projection over the whole vocabulary),
    with the FT gate of each step's prompt computed the original SPM way."""
    from diffusers import DDPMScheduler

    from spmctl.attack.denoise import STEPS_PER_T, TIMESTEPS
    from spmctl.attack.tokens import SlotPrompts, encode_with_slots, project
    from spmctl.sampling.ft import ft_gates

    model = ctx.model
    tok, te, unet = model.tokenizer, model.text_encoder, model.unet
    full = te.get_input_embeddings().weight.detach()
    alphas = DDPMScheduler.from_config(model.scheduler_config).alphas_cumprod
    concepts = [s.concepts for s in ctx.spms]
    for it in items:
        prompts = SlotPrompts(tok, [it.layout], [it.label])
        embeds = full[torch.randint(0, len(full), (it.layout.slots,))].clone().requires_grad_(True)
        opt = torch.optim.Adam([embeds], lr=0.01, weight_decay=0.1)
        for step in range(args.attack_steps):
            opt.zero_grad()
            ids_vocab = project(embeds.detach(), full).unsqueeze(0)
            proj = full[ids_vocab[0]].clone().requires_grad_(True)
            ids = prompts.with_tokens(ids_vocab)
            hidden = encode_with_slots(te, ids, prompts.mask, proj)
            text = tok.decode(ids[0, 1 : 1 + len(it.layout.items) + it.layout.slots])
            ctx.set_gates(ft_gates(model, [text], concepts))
            noise = torch.randn_like(it.x0)
            t = TIMESTEPS[(step // STEPS_PER_T) % len(TIMESTEPS)]
            a = alphas[t]
            x_t = a.sqrt() * it.x0 + (1 - a).sqrt() * noise
            pred = unet(x_t, torch.tensor([t]), encoder_hidden_states=hidden).sample
            loss = ((pred - noise) ** 2).mean()
            (grad,) = torch.autograd.grad(loss, proj)
            embeds.grad = grad
            opt.step()


def reference_ring_a_bell(ctx, items, args) -> None:
    """The reference's fitness loop: every individual in its own text-encoder call."""
    from spmctl.attack.ring_a_bell import RingABellEngine

    engine = RingABellEngine(ctx, items)
    te = ctx.model.text_encoder
    for it, target in zip(items, engine.targets, strict=True):
        prompts = engine.prompts.subset([engine.items.index(it)])
        for _ in range(args.attack_steps):
            pop = it.state.population
            scores = []
            with torch.no_grad():
                for ind in pop:
                    hidden = te(prompts.with_tokens(ctx.vocab.ids[ind].unsqueeze(0)))[0]
                    scores.append(float(((hidden - target) ** 2).sum()))
            score = torch.tensor(scores)
            keep = torch.argsort(score)[: len(pop) // 2]
            it.state.population = engine._breed(pop[keep], torch.Generator().manual_seed(it.state.step))
            it.state.step += 1


if __name__ == "__main__":
    main()
