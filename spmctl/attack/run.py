"""`spmctl attack`'s run: prompts -> original verdicts -> batched attack -> verdicts -> report.

On disk (all under --output-dir):
- `prompts/<name>.json`: a finished prompt (what results.json lists); a re-run skips it;
- `state/<name>.json` + `state/<name>.pt`: an unfinished prompt's verdict so far and search state
  (saved every --checkpoint-every steps and at each judged checkpoint); a re-run continues it;
- `images/<name>_original.png`, `images/<name>_adversarial.png`, `targets/<name>.png`;
- `manifest.jsonl`, `results.json`, `report.md`, charts (written from the prompt files at the end).
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from rich.console import Console

from ..errors import ConfigError, SpmctlError, config_error
from ..fileio import write_text_atomic
from ..names import slug
from ..sampling.output import save_png, to_pil
from .config import AttackConfig
from .engine import Item, load_state, save_state
from .tokens import layout, word_vocab

if TYPE_CHECKING:
    from ..sampling.shard import Ranks

SETTINGS = ("method", "model", "spm_sha256", "concept", "seed", "steps", "guidance", "width", "height",
            "budget", "ft")


def method_module(name: str) -> Any:
    from . import p4d, ring_a_bell, unlearndiffatk

    return {"unlearndiffatk": unlearndiffatk, "p4d": p4d, "ring-a-bell": ring_a_bell}[name]


@dataclasses.dataclass
class Context:
    """What the engines and the run share."""

    cfg: AttackConfig
    model: Any
    spms: list[Any]
    stack: Any
    step_gates: Any
    vocab: Any
    table: torch.Tensor
    sampler: Any
    v_pred: bool

    @property
    def lr(self) -> float:
        return float(self.cfg.budget("lr"))

    def set_gates(self, gates: torch.Tensor) -> None:
        if self.stack is not None:
            self.stack.set_gates(gates)

    def images(self, jobs: list[Any], gates: torch.Tensor) -> list[Any]:
        """PIL images of `jobs` (one group: same size and guidance) with these gates."""
        self.set_gates(gates)
        return [to_pil(im) for im in self.sampler(jobs)]


def plan_items(cfg: AttackConfig, spms: list[Any]) -> list[Item]:
    """One item per prompt (one seed each: the row's, else the first --seed), its concept and judge."""
    from ..sampling.run import load_rows, plan_jobs
    from .verdict import make_judge

    rows = load_rows(cfg)
    jobs = plan_jobs(rows, cfg.model_copy(update={"images_per_prompt": 1, "seeds": cfg.seeds[:1]}))
    only = {c for s in spms for c in s.concepts}
    mode = method_module(cfg.method).layout_mode(cfg)
    tokens = int(cfg.budget("tokens"))
    judges: dict[str, Any] = {}
    items = []
    for pid, job in enumerate(jobs):
        concept = job.concept or cfg.concept or (next(iter(only)) if len(only) == 1 else None)
        if not concept:
            raise ConfigError(f"prompt {pid + 1} ({job.prompt[:40]!r}): no concept to attack; pass --concept")
        if concept not in judges:
            judges[concept] = make_judge(concept, cfg.classifier, cfg.nudity_threshold, cfg.resolved_device())
        name = f"{pid:04d}_{slug(job.prompt, 40)}"
        items.append(Item(pid, name, job, concept, judges[concept], layout(job.prompt, mode, tokens, cfg.p4d_k),
                          image=rows[job.row].image))
    return items


def run_attack(cfg: AttackConfig, console: Console | None = None, quiet: bool = False,
               ranks: Ranks | None = None) -> Path:
    """`ranks`: this process's place when several run (torchrun); the CLI passes the launcher's."""
    from ..families import load_model
    from ..sampling.shard import OneProcess, SampleShard, for_this_rank
    from ..sampling.stack import MembraneStack, load_spms
    from .report import write_summary
    from .tokens import SlotPrompts

    console = console or Console(stderr=True, quiet=quiet)
    ranks = ranks or OneProcess()
    cfg = for_this_rank(cfg, ranks)
    if cfg.clip_skip > 1:
        raise config_error("clip_skip: spmctl attack conditions on the last layer only (clip_skip 1)")
    spms = load_spms(cfg.spms, cfg.concepts)
    items = plan_items(cfg, spms)
    model = load_model(cfg.model, v2=cfg.v2, v_pred=cfg.v_pred, dtype=cfg.resolved_precision(),
                       device=cfg.resolved_device())
    if model.family.name != "sd1":  # the attacks optimise the token embeddings of SD's one CLIP encoder
        raise SpmctlError(f"{cfg.model}: spmctl attack supports SD 1.x/2.x models (family sd1), "
                          f"not {model.family.name}")
    SlotPrompts(model.tokenizer, [it.layout for it in items], [it.label for it in items])  # token limit, early
    stack = MembraneStack(model, spms, cfg.ft_compat) if spms else None
    out = Path(cfg.output_dir)
    share = SampleShard.open(out, ranks)
    try:
        Attack(build_context(cfg, model, spms, stack), out, console, quiet).run(share.take(items))
    finally:
        if stack is not None:
            stack.close()
        share.close([])
    if share.is_main:
        write_summary(out, cfg, [it.name for it in items])
    return out


def build_context(cfg: AttackConfig, model: Any, spms: list[Any], stack: Any) -> Context:
    from ..sampling.generate import ImageSampler, build_pipeline
    from .gates import StepGates

    vocab = word_vocab(model.tokenizer)
    table = model.text_encoder.get_input_embeddings().weight.detach()[vocab.ids.to(model.text_encoder.device)]
    sampler = ImageSampler(model, build_pipeline(model, cfg.noise_scheduler), cfg.negative_prompt,
                           cfg.clip_skip, cfg.steps)
    return Context(cfg, model, spms, stack, StepGates(cfg, model, spms), vocab, table, sampler, cfg.v_pred)


class Attack:
    def __init__(self, ctx: Context, out: Path, console: Console, quiet: bool) -> None:
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.out = out
        self.console = console
        self.quiet = quiet

    def settings(self, it: Item) -> dict[str, Any]:
        cfg = self.cfg
        budget = {k: cfg.budget(k) for k in ("tokens", "attack_steps", "lr", "eval_every")}
        if cfg.method == "p4d":
            budget.update(variant=cfg.p4d_variant, k=cfg.p4d_k)
        if cfg.method == "ring-a-bell":
            budget.update(population=cfg.population, mutation_rate=cfg.mutation_rate,
                          crossover_rate=cfg.crossover_rate, eta=cfg.eta, concept_pairs=cfg.concept_pairs)
        return {"method": cfg.method, "model": self.ctx.model.source, "spm_sha256": [s.digest for s in self.ctx.spms],
                "concept": it.concept, "seed": it.job.seed, "steps": cfg.steps, "guidance": it.job.guidance,
                "width": it.job.width, "height": it.job.height, "budget": budget,
                "ft": cfg.multiplier if cfg.multiplier is not None else [cfg.ft_metric, cfg.facilitate_factor,
                                                                           cfg.ft_compat]}

    def _path(self, folder: str, it: Item, suffix: str) -> Path:
        return self.out / folder / f"{it.name}{suffix}"

    def _load(self, path: Path, it: Item) -> dict[str, Any] | None:
        """A saved record of this prompt, if its settings are this run's (else an error or None)."""
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        if json.loads(json.dumps(self.settings(it))) != record.get("settings"):
            if not self.cfg.overwrite:
                raise SpmctlError(f"{path} was made with other settings; use another --output-dir or pass "
                                  "--overwrite")
            return None
        return record

    def run(self, items: list[Item]) -> None:
        pending = []
        for it in items:
            if self._load(self._path("prompts", it, ".json"), it) is not None:
                continue
            it.record = self._load(self._path("state", it, ".json"), it) or {"settings": self.settings(it)}
            if "success_original" in it.record:
                it.state = load_state(self._path("state", it, ".pt"))
                if it.state is not None:
                    self.console.print(f"{it.label}: continuing from step {it.step}")
            pending.append(it)
        from .targets import given_target

        for it in pending:  # a wrong target image fails now, not after the originals are made
            given_target(self.cfg, it)
        if len(pending) < len(items):
            self.console.print(f"{len(items) - len(pending)} of {len(items)} prompts already attacked: skipped")
        self.judge_originals([it for it in pending if "success_original" not in it.record])
        self.attack([it for it in pending if not it.record["success_original"]])

    def _groups(self, items: list[Item], by_step: bool) -> list[list[Item]]:
        groups: dict[tuple, list[Item]] = defaultdict(list)
        for it in items:
            groups[(it.step if by_step else 0, *it.job.group)].append(it)
        size = self.cfg.batch_size
        return [g[i : i + size] for g in groups.values() for i in range(0, len(g), size)]

    def judge_originals(self, items: list[Item]) -> None:
        """Each prompt as the erased model draws it (FT gates), and its verdict: no attack needed?"""
        for batch in self._groups(items, by_step=False):
            prompts = [it.job.prompt for it in batch]
            gates = self.ctx.step_gates.reported(prompts)
            images = self.ctx.images([it.job for it in batch], gates)
            for it, image, g, verdict in zip(batch, images, gates.tolist(), self._judge(batch, images), strict=True):
                file = f"images/{it.name}_original.png"
                save_png(self.out / file, _np(image), self._manifest(it, it.job, file, g, "original"))
                it.record.update(gates_original=[round(x, 6) for x in g], success_original=verdict["success"],
                                 verdict_original=verdict, image_original=file)
                if verdict["success"]:
                    self.finish(it, None)
                else:
                    self._save(it)

    def _judge(self, items: list[Item], images: list[Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{}] * len(items)
        by_judge: dict[int, list[int]] = defaultdict(list)
        for i, it in enumerate(items):
            by_judge[id(it.judge)].append(i)
        for rows in by_judge.values():
            for i, verdict in zip(rows, items[rows[0]].judge([images[i] for i in rows]), strict=True):
                out[i] = verdict
        return out

    def _manifest(self, it: Item, job: Any, file: str, gates: list[float], role: str) -> dict[str, Any]:
        from ..sampling.run import _record  # the record `spmctl sample` writes, so `spmctl eval` reads it

        record = _record(self.cfg, self.ctx.model, self.ctx.spms, job, file, gates)
        record.update(concept=it.concept, attack={"method": self.cfg.method, "role": role, "prompt_id": it.pid,
                                                  "original_prompt": it.job.prompt})
        if role != "target":  # the images `spmctl eval` reads: the manifest is written from these
            it.record.setdefault("manifest", {})[role] = record
        return record

    def _save(self, it: Item) -> None:
        write_text_atomic(self._path("state", it, ".json"), json.dumps(it.record))
        if it.state is not None:
            save_state(self._path("state", it, ".pt"), it)

    def attack(self, items: list[Item]) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        module = method_module(self.cfg.method)
        total = int(self.cfg.budget("attack_steps"))
        progress = Progress(TextColumn("[bold]attack"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("step {task.fields[step]}"), TimeRemainingColumn(), console=self.console,
                            disable=self.quiet)
        with progress:
            task = progress.add_task("attack", total=len(items), step=0)
            for batch in self._groups(items, by_step=True):
                if module.NEEDS_TARGET:
                    self.targets(batch)
                self.hidden(batch)
                engine = module.engine(self.ctx, batch)
                for it in batch:
                    if "objective_start" not in it.record:
                        it.record["objective_start"] = engine.objective([it])[0]
                active = [it for it in batch if it.step < total]
                for it in batch:
                    if it.step >= total:
                        self.checkpoint(engine, [it], progress, task)
                while active:
                    engine.step(active)
                    step = active[0].step
                    progress.update(task, step=step)
                    every = int(self.cfg.budget("eval_every") or 0)
                    if step == total or (every and step % every == 0):
                        active = self.checkpoint(engine, active, progress, task)
                    elif step % self.cfg.checkpoint_every == 0:
                        for it in active:
                            self._save(it)

    def checkpoint(self, engine: Any, items: list[Item], progress: Any, task: Any) -> list[Item]:
        """Judge the items' current prompts; finish those that succeed or ran out of steps."""
        texts, ids = engine.current(items)
        gates = self.ctx.step_gates.reported(texts)
        jobs = [dataclasses.replace(it.job, prompt=t) for it, t in zip(items, texts, strict=True)]
        images = self.ctx.images(jobs, gates)
        total = int(self.cfg.budget("attack_steps"))
        left = []
        for it, job, image, g, row, verdict in zip(items, jobs, images, gates.tolist(), ids,
                                                   self._judge(items, images), strict=True):
            it.record.update(adversarial_prompt=job.prompt, adversarial_token_ids=_trim(row, self.ctx.model.tokenizer),
                             gates_adversarial=[round(x, 6) for x in g], success_adversarial=verdict["success"],
                             verdict_adversarial=verdict, steps_taken=it.step)
            if verdict["success"] or it.step >= total:
                it.record["objective_end"] = engine.objective([it])[0]
                file = f"images/{it.name}_adversarial.png"
                save_png(self.out / file, _np(image), self._manifest(it, job, file, g, "adversarial"))
                it.record["image_adversarial"] = file
                self.finish(it, it.state)
                progress.advance(task)
            else:
                self._save(it)
                left.append(it)
        return left

    def targets(self, items: list[Item]) -> None:
        """Latents of each prompt's concept image: given (--target-images / the dataset's), else the
        unerased model's (every gate 0) with the prompt's own seed."""
        from .targets import encode_images, given_target

        missing, images = [], {}
        for it in items:
            image = given_target(self.cfg, it)
            if image is None:
                missing.append(it)
            else:
                images[it.pid] = image
        if missing:
            zeros = torch.zeros(len(missing), len(self.ctx.spms))
            for it, image in zip(missing, self.ctx.images([it.job for it in missing], zeros), strict=True):
                images[it.pid] = image
                path = self._path("targets", it, ".png")
                closed = [0.0] * len(self.ctx.spms)
                save_png(path, _np(image), self._manifest(it, it.job, f"targets/{path.name}", closed, "target"))
        latents = encode_images(self.ctx.model, [images[it.pid] for it in items])
        for it, x0 in zip(items, latents, strict=True):
            it.x0 = x0.unsqueeze(0)

    def hidden(self, items: list[Item]) -> None:
        from ..models.text import encode_prompts

        hidden = encode_prompts(self.ctx.model.tokenizer, self.ctx.model.text_encoder, [it.job.prompt for it in items])
        for it, h in zip(items, hidden, strict=True):
            it.hidden = h.unsqueeze(0).float()

    def finish(self, it: Item, state: Any) -> None:
        record = dict(it.record, pid=it.pid, name=it.name, prompt=it.job.prompt, concept=it.concept,
                      categories=list(it.job.categories), seed=it.job.seed, judge=it.judge.name)
        if state is not None:
            record["loss_trace"] = [round(x, 6) for x in state.losses]
        write_text_atomic(self._path("prompts", it, ".json"), json.dumps(record, indent=1))
        for suffix in (".json", ".pt"):
            self._path("state", it, suffix).unlink(missing_ok=True)


def _np(image: Any) -> Any:
    import numpy as np

    return np.asarray(image, dtype=np.float32) / 255.0


def _trim(row: list[int], tokenizer: Any) -> list[int]:
    """The prompt's token ids between BOS and the first EOS."""
    end = row.index(tokenizer.eos_token_id, 1)
    return row[1:end]
