"""Should the adaLN modulation layers of SD3/FLUX carry membranes? A measurement on the tiny models.

    python benchmarks/bench_flow_modulation.py --out flow_modulation.json [--iterations 100] [--seeds 0 1]

For each family (tiny-sd3, tiny-flux) and seed, two membranes are trained by spmctl's own trainer
with the same config: on the attention and feed-forward Linears of the transformer blocks (spmctl's
placement), and on those plus every block's modulation Linear (norm1.linear, norm1_context.linear,
FLUX's single-block norm.linear). Each is then measured with fixed draws (`SPMObjective.evaluate`)
and on fixed probes:

- erase_ratio: the erase term after training / before (lower: the target's velocity is closer to
  v_neu − g·(v_pos − v_neu));
- anchor_loss: the anchoring term after training (the drift on random anchors);
- unrelated_drift: for prompts unrelated to the concept, the mean squared change of the velocity
  with the membrane at gate 1 (unrelated_change), relative to the change it makes for the concept
  (concept_change): what leaks to other prompts before facilitated transport closes the membrane,
  per unit of erasure (lower: more selective);
- membrane_parameters.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

UNRELATED = ["a photo of a dog", "a red car on a street", "a house by the sea", "a portrait of a woman"]


def train_once(family: str, modulation: bool, seed: int, iterations: int, root: Path) -> Path:
    from spmctl.config.train import load_train_config
    from spmctl.families.flow import FlowFamily
    from spmctl.training.run import run_training

    FlowFamily.modulation = modulation  # the variant measured (class-wide); spmctl itself never sets it
    cfg = {
        "pretrained_model": {"ckpt_path": f"tiny-{family}"},
        "train": {"iterations": iterations, "lr": 3e-3, "optimizer_type": "AdamW", "lr_scheduler": "constant",
                  "lr_warmup_steps": 0, "max_denoising_steps": 10},
        "save": {"per_steps": 10 * iterations}, "template": "concept", "template_name": "cat",
        "prompt": {"action": "erase_with_la", "resolution": 64, "dynamic_resolution": False,
                   "la_strength": 10, "sampling_batch_size": 2},
        "devices": "cpu", "seed": seed, "output_dir": str(root / f"{family}_{modulation}_{seed}"),
    }
    return run_training(load_train_config(None, cfg)[0], quiet=True)


def measure(family: str, modulation: bool, path: Path) -> dict[str, float]:
    from spmctl.config.train import load_train_config
    from spmctl.families import load_model
    from spmctl.families.flow import FlowFamily
    from spmctl.membrane import MembraneNetwork, load_membrane
    from spmctl.training.objective import SPMObjective
    from spmctl.training.prompts import resolve_prompt_settings
    from spmctl.training.run import _embeds

    FlowFamily.modulation = modulation
    model = load_model(f"tiny-{family}")
    network = MembraneNetwork.for_model(model)
    mf = load_membrane(path)
    cfg = load_train_config(None, {"pretrained_model": {"ckpt_path": f"tiny-{family}"}, "template": "concept",
                                   "template_name": "cat", "prompt": {"resolution": 64, "sampling_batch_size": 2,
                                                                      "dynamic_resolution": False}})[0]
    embeds = _embeds(model, resolve_prompt_settings(cfg), 1)[0]
    objective = SPMObjective(model, network, lambda: model.family.make_scheduler(model, "model"), 10)
    before = objective.evaluate(embeds)
    network.load_state_dict_for(0, mf.tensors)
    after = objective.evaluate(embeds)

    gen = torch.Generator().manual_seed(7)
    cond = model.family.encode(model, ["cat", *UNRELATED])
    latents = torch.randn((len(UNRELATED) + 1, *model.family.latent_shape(model, 1, 64, 64)[1:]), generator=gen)
    change = []
    with torch.no_grad():
        for t in (200.0, 500.0, 800.0):
            with network.gated(0.0):
                off = model.family.predict(model, latents, torch.tensor(t), cond)
            with network.gated(1.0):
                on = model.family.predict(model, latents, torch.tensor(t), cond)
            change.append(((on - off) ** 2).flatten(1).mean(1))
    change_t = torch.stack(change).mean(0)
    network.detach()
    return {
        "erase_before": before["erase_loss"], "erase_after": after["erase_loss"],
        "erase_ratio": after["erase_loss"] / before["erase_loss"], "anchor_loss": after["anchor_loss"],
        "unrelated_drift": float(change_t[1:].mean() / change_t[0]),
        "concept_change": float(change_t[0]), "unrelated_change": float(change_t[1:].mean()),
        "membrane_parameters": sum(p.numel() // p.shape[0] for p in network.trainable_parameters()),
        "membrane_layers": network.modules_count,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="flow_modulation.json")
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--families", nargs="+", default=["sd3", "flux"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families:
            for seed in args.seeds:
                for modulation in (False, True):
                    start = time.perf_counter()
                    path = train_once(family, modulation, seed, args.iterations, Path(tmp))
                    row = {"family": family, "modulation": modulation, "seed": seed,
                           **measure(family, modulation, path), "seconds": time.perf_counter() - start}
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr)
    summary = {}
    for family in args.families:
        for modulation in (False, True):
            sel = [r for r in rows if r["family"] == family and r["modulation"] == modulation]
            summary[f"{family}{'+modulation' if modulation else ''}"] = {
                key: sum(r[key] for r in sel) / len(sel)
                for key in ("erase_ratio", "anchor_loss", "unrelated_drift", "concept_change", "unrelated_change",
                            "membrane_parameters")}
    Path(args.out).write_text(json.dumps({"iterations": args.iterations, "seeds": args.seeds, "rows": rows,
                                          "mean": summary}, indent=2))
    for name, values in summary.items():
        print(f"{name:18} erase ratio {values['erase_ratio']:.3f}  anchor {values['anchor_loss']:.2e}  "
              f"unrelated drift {values['unrelated_drift']:.3f} ({values['unrelated_change']:.2e} vs concept "
              f"{values['concept_change']:.2e})  params {values['membrane_parameters']:.0f}")


if __name__ == "__main__":
    main()
