"""The `unlearndiffatk` suite: erase each task's concept, then attack it with UnlearnDiffAtk through FT.

UnlearnDiffAtk's six tasks (nudity, Van Gogh, church, parachute, tench, garbage truck), or any
concept text: one membrane per task (the sweep), then `spmctl attack unlearndiffatk` over the
task's prompt file (`<prompts-dir>/<task>.csv`, the benchmark's prompts with their seeds), judged by
NudeNet (nudity) or a classifier (a plugin's name or an UnlearnCanvas checkpoint). Each attack keeps
its own resumable state (`attack/<task>/prompts`, `state`), so a killed run continues. The row of a
task is its attack success rate before (the original prompts) and after the attack.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

from ..errors import config_error
from .suites import Options, _percent, inputs_checked

# task -> (template, concept the membrane erases and the judge looks for)
TASKS = {
    "nudity": ("i2p", "nudity"),
    "van_gogh": ("concept", "Van Gogh"),
    "church": ("concept", "church"),
    "parachute": ("concept", "parachute"),
    "tench": ("concept", "tench"),
    "garbage_truck": ("concept", "garbage truck"),
}


# the benchmark's own prompt files (OPTML-Group/Diffusion-MU-Attack, prompts/) where they are not <task>.csv
BENCHMARK_FILES = {"van_gogh": "vangogh.csv"}
ALIASES = {"vangogh": "van_gogh", "garbagetruck": "garbage_truck"}  # --tasks as those files spell them


def task_key(name: str) -> str:
    key = "_".join(name.casefold().split())
    return ALIASES.get(key, key)


def task_name(name: str) -> str:
    """How --tasks keeps a task in the run's settings: a known task by its key (so `vangogh`,
    `Van Gogh` and `van_gogh` are one run), any other concept as its text."""
    return task_key(name) if task_key(name) in TASKS else " ".join(name.split())


class UnlearnDiffAtkSuite:
    name = "unlearndiffatk"
    score_columns = ("ASR_before", "ASR_after", "prompts")
    average = False  # the papers report each task apart
    units = "ASR in % of the task's prompts; prompts is a count"
    row_kind = "task"

    def check(self, opts: Options) -> None:
        """Each task's prompts and judge, before any training: a missing, unreadable or empty prompt
        file, or a classifier that is unknown, lacks the concept or names no task, would otherwise
        stop the run after the membranes are trained."""
        from ..attack.verdict import make_judge
        from ..errors import did_you_mean
        from ..plugins import get_dataset

        if opts.seeds and len(opts.seeds) > 1:  # the attack takes one seed a prompt (its own, else --seeds')
            raise config_error(f"--seeds: unlearndiffatk attacks each prompt once, with its own seed or else "
                               f"the one --seeds gives; got {len(opts.seeds)} seeds")
        tasks = self.tasks(opts)
        names = [task for task, _template, _concept in tasks]
        for key, name in (opts.extra.get("classifiers") or {}).items():
            if key != "*" and key not in names:
                raise config_error(f"--classifier {key}={name}: no task {key!r} in --tasks ({', '.join(names)})"
                                   f"{did_you_mean(key, names)}")
        for task, _template, concept in tasks:
            path = self.prompts_file(opts, task)
            with inputs_checked():  # no 'prompt' column, a malformed CSV
                if next(iter(get_dataset("prompts").rows(None, path=str(path))), None) is None:
                    raise config_error(f"{path}: no prompts (the task's prompts, a CSV with 'prompt' and a "
                                       "seed column)")
                make_judge(concept, self.classifier(opts, task), 0.5, load=False)

    def tasks(self, opts: Options) -> list[tuple[str, str, str]]:
        """(task, template, concept) per task: a known task's, else the text as a concept."""
        out = []
        for task in opts.extra["tasks"]:
            template, concept = TASKS.get(task_key(task), ("concept", " ".join(task.split())))
            out.append((task_key(task), template, concept))
        if not out:
            raise config_error("--tasks names nothing to attack")
        return out

    def train_groups(self, opts: Options) -> list[tuple[str, list[str], str]]:
        groups: dict[str, list[str]] = {}
        for _task, template, concept in self.tasks(opts):
            groups.setdefault(template, []).append(concept)
        return [(template, names, "nudity" if template == "i2p" else "concepts") for template, names in groups.items()]

    def prompts_file(self, opts: Options, task: str) -> Path:
        """`<task>.csv`, else the benchmark's own name for it (Van Gogh's prompts are `vangogh.csv`)."""
        folder = Path(opts.extra["prompts_dir"])
        names = [f"{task}.csv", *([BENCHMARK_FILES[task]] if task in BENCHMARK_FILES else [])]
        for name in names:
            if (folder / name).is_file():
                return folder / name
        raise config_error(f"--prompts-dir: no {' or '.join(names)} in {folder} (the task's prompts, a CSV "
                           "with 'prompt' and a seed column)")

    def classifier(self, opts: Options, task: str) -> str | None:
        """TASK=NAME's, else NAME's, which is for every task but nudity (NudeNet judges it)."""
        given = opts.extra.get("classifiers") or {}
        if task in given:
            return given[task]
        return None if TASKS.get(task, ("concept",))[0] == "i2p" else given.get("*")

    def attack_config(self, opts: Options, task: str, concept: str, membrane: Path, first: int | None = None) -> Any:
        """`spmctl attack unlearndiffatk`'s config for one task; `first`: only its first prompts (the warm-up,
        whose prompts keep their names and settings, so the whole run then skips them)."""
        from ..attack.config import load_attack_config

        prompts = str(self.prompts_file(opts, task))
        overrides: dict[str, Any] = {
            "method": "unlearndiffatk", "model": opts.model, "spms": [str(membrane)], "prompts_file": prompts,
            "concept": concept, "classifier": self.classifier(opts, task),
            "output_dir": str(opts.output_dir / "attack" / task), "steps": opts.steps, "guidance": opts.guidance,
            "width": opts.width, "height": opts.height, "device": opts.device, "precision": opts.precision,
            "noise_scheduler": opts.noise_scheduler, "batch_size": opts.batch_size,
            "negative_prompt": opts.negative_prompt}
        if first is not None:
            overrides.update(prompts_file=None, dataset="prompts", dataset_options={"path": prompts, "limit": first})
        for key in ("tokens", "attack_steps", "lr", "eval_every"):
            if opts.extra.get(key) is not None:
                overrides[key] = opts.extra[key]
        if opts.seeds:
            overrides["seeds"] = list(opts.seeds)
        return load_attack_config(None, overrides)[0]

    def attack_stage(self, opts: Options, state: Any, console: Any, membranes: dict[str, Path],
                     ranks: Any) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
        """One attack per task over its prompts, shared out over the processes under torchrun (each
        rank attacks prompts r, r + world, ...); returns the rows and the evaluator's pins (rank 0;
        the other ranks get nothing back).

        Warm-up: the first task's first prompts (one per process), timed; their device-seconds per
        prompt give the estimate of the attacks left."""
        from ..attack.run import run_attack
        from ..distributed.dist import from_main
        from .pins import package_versions
        from .run import estimate

        state.stage("attack", status="running")
        rows: dict[str, dict[str, Any]] = {}
        judges: dict[str, Any] = {}
        for task, _template, concept in self.tasks(opts):
            out = opts.output_dir / "attack" / task
            if from_main(lambda: "seconds_per_attack_prompt" not in state.costs):
                warm = self.attack_config(opts, task, concept, membranes[concept], first=ranks.world_size)
                made, seconds = _timed(partial(run_attack, warm, console=console, quiet=opts.quiet, ranks=ranks), out)
                if made and state.main:
                    state.costs["seconds_per_attack_prompt"] = seconds * ranks.world_size / made
                    state.save()
                    estimate(self, opts, state, console, "after the attack warm-up")
            cfg = self.attack_config(opts, task, concept, membranes[concept])
            console.print(f"benchmark: attacking {task} ({concept!r}) -> {out}", highlight=False)
            run_attack(cfg, console=console, quiet=opts.quiet, ranks=ranks)
            if not state.main:  # rank 0 reads what every rank attacked (its summary came after a barrier)
                continue
            results = json.loads((out / "results.json").read_text(encoding="utf-8"))
            asr = results["asr"].get(concept) or next(iter(results["asr"].values()), {})
            rows[task] = {"ASR_before": _percent(asr.get("asr_before")), "ASR_after": _percent(asr.get("asr_after")),
                          "prompts": asr.get("prompts", 0)}
            judges[task] = {"judge": self.classifier(opts, task) or ("nudenet" if task == "nudity" else "plugin"),
                            "nudity_threshold": cfg.nudity_threshold,
                            "budget": {k: cfg.budget(k) for k in ("tokens", "attack_steps", "lr", "eval_every")}}
        state.stage("attack", status="done")
        pins = {"packages": package_versions(("nudenet",)), "evaluator": judges,
                "sampling": {k: opts.settings()[k] for k in ("model", "steps", "guidance", "width", "height",
                                                             "noise_scheduler", "precision", "negative_prompt")},
                "seeds": opts.seeds or "each prompt's own"}
        return rows, pins

    def prompts_left(self, opts: Options) -> int:
        """Prompts not yet attacked over every task (a prompt is done once its record is on disk)."""
        from ..plugins import get_dataset

        left = 0
        for task, _template, _concept in self.tasks(opts):
            total = sum(1 for _ in get_dataset("prompts").rows(None, path=str(self.prompts_file(opts, task))))
            left += max(0, total - _finished(opts.output_dir / "attack" / task))
        return left

    def published(self, opts: Options, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The published rows of the tasks this run attacks; all of them when it attacks none of the
        benchmark's (any concept text), as the field's reference points."""
        run = {task for task, _template, _concept in self.tasks(opts)}
        return [row for row in rows if row.get("task") in run] or rows

    def package_pins(self) -> tuple[str, ...]:
        return ("nudenet",)


def _finished(out: Path) -> int:
    return sum(1 for _ in (out / "prompts").glob("*.json")) if (out / "prompts").is_dir() else 0


def _timed(attack: Any, out: Path) -> tuple[int, float]:
    """(prompts newly finished, wall seconds) of one attack run."""
    import time

    before, started = _finished(out), time.perf_counter()
    attack()
    return _finished(out) - before, time.perf_counter() - started
