"""Seconds per iteration and peak memory: `spmctl train` vs. the original training loop.

Both run on the same model, config and seed, each in its own process (so peak memory is
per run), one after the other in this one invocation; the original loop replays spmctl's
per-iteration denoising depths k, so both do the same denoising work:

    python benchmarks/bench_train.py [--model tiny] [--iterations 60] [--out bench_train.json]
                                     [--devices cpu|0] [--precision float32|float16|bfloat16]
                                     [--spmctl-only]   (no original loop: it runs on the CPU in fp32)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent


def bench_config(model: str, iterations: int, resolution: int, out_dir: str, devices: str = "cpu",
                 precision: str = "float32") -> dict:
    return {
        "pretrained_model": {"ckpt_path": model},
        "train": {"iterations": iterations, "lr": 1e-3, "optimizer_type": "AdamW", "lr_scheduler": "constant",
                  "precision": precision,
                  "lr_warmup_steps": 0, "max_denoising_steps": 30},
        "save": {"per_steps": 10**6},
        "template": "concept", "template_name": "cat",
        "prompt": {"action": "erase_with_la", "resolution": resolution, "dynamic_resolution": False,
                   "la_strength": 1000, "sampling_batch_size": 4, "batch_size": 1},
        "devices": devices, "output_dir": out_dir, "seed": 0, "wandb_project": None,
    }


def run_original(config_path: str, ks: list[int]) -> dict:
    """Child process: the original loop (imports spmctl only for model loading and text encoding)."""
    sys.path.insert(0, str(HERE))
    from original_loop import train

    from spmctl.config.train import load_train_config
    from spmctl.models.loading import load_sd_model, make_scheduler
    from spmctl.training.prompts import resolve_prompt_settings

    cfg, _ = load_train_config(config_path)
    settings = resolve_prompt_settings(cfg)[0]
    model = load_sd_model(cfg.pretrained_model.ckpt_path)
    result = train(model, lambda: make_scheduler("ddim", model.scheduler_config), settings,
                   cfg.train.iterations, cfg.train.max_denoising_steps, cfg.train.lr, cfg.seed, ks)
    result["peak_memory_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--out", default="bench_train.json")
    parser.add_argument("--devices", default="cpu", help='"cpu" or a CUDA index, e.g. "0"')
    parser.add_argument("--precision", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--spmctl-only", action="store_true", help="time `spmctl train` alone")
    parser.add_argument("--original-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.original_child:
        config_path, ks = args.original_child
        print(json.dumps(run_original(config_path, json.loads(ks))))
        return

    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = Path(tmp) / "bench.yaml"
        cfg_path.write_text(yaml.safe_dump(bench_config(args.model, args.iterations, args.resolution,
                                                        str(Path(tmp) / "out"), args.devices, args.precision)))
        spmctl = Path(sys.executable).parent / "spmctl"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPMCTL_")}
        subprocess.run([str(spmctl), "train", "-c", str(cfg_path), "--quiet"], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        ours = json.loads((Path(tmp) / "out" / "cat_summary.json").read_text())
        if args.spmctl_only:
            keys = ("seconds_per_iteration", "peak_memory_bytes")
            result = {"model": args.model, "iterations": args.iterations, "resolution": args.resolution,
                      "devices": args.devices, "precision": args.precision, "spmctl": {k: ours[k] for k in keys}}
            print(f"spmctl train : {ours['seconds_per_iteration'] * 1e3:8.1f} ms/it  "
                  f"peak {ours['peak_memory_bytes'] / 2**20:7.0f} MiB")
            Path(args.out).write_text(json.dumps(result, indent=2))
            return
        # the original loop replays spmctl's denoising depths: both then do the same denoising work
        log = (Path(tmp) / "out" / "cat_log.jsonl").read_text().splitlines()
        ks = json.dumps([json.loads(line)["k"] for line in log])
        child = subprocess.run([sys.executable, __file__, "--original-child", str(cfg_path), ks], check=True,
                               capture_output=True, text=True, env=env)
        original = json.loads(child.stdout.strip().splitlines()[-1])

    result = {
        "model": args.model, "iterations": args.iterations, "resolution": args.resolution,
        "devices": args.devices, "precision": args.precision,
        "torch_threads": __import__("torch").get_num_threads(),
        "spmctl": {"seconds_per_iteration": ours["seconds_per_iteration"],
                   "peak_memory_bytes": ours["peak_memory_bytes"]},
        "original": {"seconds_per_iteration": original["seconds_per_iteration"],
                     "peak_memory_bytes": original["peak_memory_bytes"]},
    }
    result["speedup"] = original["seconds_per_iteration"] / ours["seconds_per_iteration"]
    result["memory_ratio"] = ours["peak_memory_bytes"] / max(1, original["peak_memory_bytes"])
    print(f"spmctl train : {ours['seconds_per_iteration'] * 1e3:8.1f} ms/it  "
          f"peak {ours['peak_memory_bytes'] / 2**20:7.0f} MiB")
    print(f"original loop: {original['seconds_per_iteration'] * 1e3:8.1f} ms/it  "
          f"peak {original['peak_memory_bytes'] / 2**20:7.0f} MiB")
    print(f"speed-up {result['speedup']:.2f}x  memory ratio {result['memory_ratio']:.2f}")
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
