"""Seconds per training iteration: `spmctl train` vs. the original SPM loop, in alternating rounds.

Per round, in one process and on the same config, seed and denoising depths k (the original loop
replays the depths spmctl drew; every round uses the same seed, so they are the same each round):

- spmctl: `spmctl train`'s own loop (run_training), timed by the loop itself;
- original: benchmarks/original_loop.py, the original's compute restated (its extra UNet calls and
  eager adapters, nothing else);
- as written: the same plus what the original does besides computing: a gc.collect()/CUDA-cache
  flush and progress-bar updates every iteration;
- denoising floor: the partial denoising alone (k steps, membrane folded in, CFG 3), the part of an
  iteration spmctl cannot skip: spmctl's time over it is what is left to make faster.

The order of the four flips every round (the first round starts with spmctl: it supplies the depths),
so drift on a shared machine hits each the same. Reported: the median of the per-round ratios and
their spread (min, max):

    OMP_NUM_THREADS=1 python benchmarks/bench_train.py [--model tiny] [--iterations 60] [--rounds 5]
                                     [--devices cpu|0] [--precision float32|float16|bfloat16]
                                     [--spmctl-only]   (no original loop: it runs on the CPU in fp32)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent


def bench_config(model: str, iterations: int, resolution: int, out_dir: str, devices: str = "cpu",
                 precision: str = "float32") -> dict:
    return {
        "pretrained_model": {"ckpt_path": model},
        "train": {"iterations": iterations, "lr": 1e-3, "optimizer_type": "AdamW", "lr_scheduler": "constant",
                  "lr_warmup_steps": 0, "max_denoising_steps": 30, "precision": precision},
        "save": {"per_steps": 10**6},
        "template": "concept", "template_name": "cat",
        "prompt": {"action": "erase_with_la", "resolution": resolution, "dynamic_resolution": False,
                   "la_strength": 1000, "sampling_batch_size": 4, "batch_size": 1},
        "devices": devices, "output_dir": out_dir, "seed": 0, "wandb_project": None,
    }


class Bench:
    def __init__(self, model: str, iterations: int, resolution: int, tmp: Path, devices: str = "cpu",
                 precision: str = "float32") -> None:
        from spmctl.config.train import load_train_config
        from spmctl.training.prompts import resolve_prompt_settings

        self.tmp = tmp
        path = tmp / "bench.yaml"
        path.write_text(yaml.safe_dump(bench_config(model, iterations, resolution, str(tmp / "out"), devices,
                                                    precision)))
        self.cfg, _ = load_train_config(path)
        self.settings = resolve_prompt_settings(self.cfg)[0]
        self.ks: list[int] | None = None
        self.runs = 0
        self.summary: dict[str, Any] = {}

    def spmctl(self) -> float:
        from spmctl.training.run import run_training

        self.runs += 1
        out = self.tmp / f"out{self.runs}"
        with contextlib.redirect_stdout(io.StringIO()):  # it prints the membrane's path
            run_training(self.cfg.model_copy(update={"output_dir": str(out)}), quiet=True)
        ks = [json.loads(line)["k"] for line in (out / "cat_log.jsonl").read_text().splitlines()]
        if self.ks is not None and ks != self.ks:
            raise SystemExit("spmctl drew other depths with the same seed: the rounds would not compare")
        self.ks = ks
        self.summary = json.loads((out / "cat_summary.json").read_text())
        return self.summary["seconds_per_iteration"]

    def original(self, as_written: bool = False) -> float:
        sys.path.insert(0, str(HERE))
        from original_loop import train

        from spmctl.families import load_model
        from spmctl.models.loading import make_scheduler
        from spmctl.training.original import ORIGINAL_SCHEDULER_CONFIG

        model = load_model(self.cfg.pretrained_model.ckpt_path)  # fresh: the loop attaches to its UNet
        result = train(model, lambda: make_scheduler("ddim", ORIGINAL_SCHEDULER_CONFIG), self.settings,
                       self.cfg.train.iterations, self.cfg.train.max_denoising_steps, self.cfg.train.lr,
                       self.cfg.seed, self.ks, as_written=as_written)
        return result["seconds_per_iteration"]

    def as_written(self) -> float:
        return self.original(as_written=True)

    def floor(self) -> float:
        """The partial denoising of every iteration alone, as spmctl runs it."""
        import torch

        from spmctl.families import load_model
        from spmctl.membrane import MembraneNetwork
        from spmctl.models.loading import make_scheduler
        from spmctl.training.objective import SPMObjective
        from spmctl.training.run import _embeds

        model = load_model(self.cfg.pretrained_model.ckpt_path)
        network = MembraneNetwork.for_model(model, rank=self.cfg.network.rank, alpha=self.cfg.network.alpha)
        objective = SPMObjective(model, network, lambda: make_scheduler("ddim", model.scheduler_config),
                                 self.cfg.train.max_denoising_steps)
        embeds = _embeds(model, [self.settings], 1)[0]
        gen = torch.Generator().manual_seed(0)
        res = self.settings.resolution
        start = time.perf_counter()
        for k in self.ks or []:
            latents = objective.initial_latents(self.settings.batch_size, res, res, gen)
            objective.denoise(latents, embeds.unconditional, embeds.target, k, gen)
        return (time.perf_counter() - start) / max(1, len(self.ks or []))


def spread(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "per_round": [round(v, 4) for v in values]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="bench_train.json")
    parser.add_argument("--devices", default="cpu", help='"cpu" or a CUDA index, e.g. "0"')
    parser.add_argument("--precision", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--spmctl-only", action="store_true", help="time `spmctl train` alone, once")
    args = parser.parse_args()

    import torch

    if args.spmctl_only:
        with tempfile.TemporaryDirectory() as tmp:
            bench = Bench(args.model, args.iterations, args.resolution, Path(tmp), args.devices, args.precision)
            bench.spmctl()
        keys = ("seconds_per_iteration", "peak_memory_bytes")
        result = {"model": args.model, "iterations": args.iterations, "resolution": args.resolution,
                  "devices": args.devices, "precision": args.precision,
                  "spmctl": {k: bench.summary[k] for k in keys}}
        print(f"spmctl train : {result['spmctl']['seconds_per_iteration'] * 1e3:8.1f} ms/it  "
              f"peak {result['spmctl']['peak_memory_bytes'] / 2**20:7.0f} MiB")
        Path(args.out).write_text(json.dumps(result, indent=2))
        return

    names = ["spmctl", "original", "as_written", "floor"]
    times: dict[str, list[float]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(args.model, args.iterations, args.resolution, Path(tmp))
        for r in range(args.rounds):
            for name in names if r % 2 == 0 else reversed(names):
                times[name].append(getattr(bench, name)())
            print(f"round {r + 1}/{args.rounds}: " + "  ".join(f"{n} {times[n][-1] * 1e3:.1f} ms/it" for n in names),
                  file=sys.stderr)

    rounds = range(args.rounds)
    result: dict[str, Any] = {
        "model": args.model, "iterations": args.iterations, "resolution": args.resolution, "rounds": args.rounds,
        "torch_threads": torch.get_num_threads(),
        "seconds_per_iteration": {n: statistics.median(times[n]) for n in names},
        "speedup": spread([times["original"][i] / times["spmctl"][i] for i in rounds]),
        "speedup_vs_as_written": spread([times["as_written"][i] / times["spmctl"][i] for i in rounds]),
        "over_denoising_floor": spread([times["spmctl"][i] / times["floor"][i] for i in rounds]),
    }
    for name, label in (("speedup", "speed-up vs. the original loop (compute)"),
                        ("speedup_vs_as_written", "speed-up vs. the original as written"),
                        ("over_denoising_floor", "spmctl over the denoising floor")):
        s = result[name]
        print(f"{label:42s} {s['median']:.2f}x  (rounds {s['min']:.2f}-{s['max']:.2f})")
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
