"""Concept sweeps: one membrane per concept, each in `output_dir/<concept slug>/` with its own resume state.

A sweep is `run_training` once per concept on a copy of the run's configuration (template and
template_name set to the concept, output_dir set to its folder, resume when that folder holds a
state). Processes take the concepts still to do round-robin (`i % world_size == rank`); one
concept's failure is recorded and the others go on.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SpmctlError, config_error, one_line
from ..names import run_slug
from . import dist
from .sweep_state import SweepState

if TYPE_CHECKING:
    from rich.console import Console

    from ..config.train import TrainConfig
    from .ddp import DataParallel

DEFAULT_TEMPLATE = "concept"  # any text is a concept


@dataclass(frozen=True)
class SweepSpec:
    """What to sweep over: a file of names, and/or `names` ("all" or "A,B,C") of `template`."""

    file: Path | None = None
    template: str | None = None
    names: str | None = None

    @property
    def given(self) -> bool:
        return bool(self.file or self.template or self.names)


def read_concept_file(path: Path) -> list[str]:
    """One concept per line; blank lines and `#` comments are skipped."""
    from ..textio import read_text_file

    try:
        text = read_text_file(path)
    except SpmctlError as exc:
        raise config_error(f"--sweep {exc}") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def sweep_concepts(spec: SweepSpec, cfg: TrainConfig) -> tuple[str, list[str]]:
    """The sweep's template and its concepts in order, without repeats.

    An unknown template fails the whole sweep here; an unknown *name* fails only that concept, later."""
    from .. import plugins
    from ..providers import as_list

    template = spec.template or cfg.template or DEFAULT_TEMPLATE
    provider = plugins.get_template(template)
    names: list[str] = read_concept_file(spec.file) if spec.file else []
    if spec.names and spec.names.strip().lower() == "all":
        known = provider.names()
        if known is None:
            raise config_error(f"--sweep-names all: template {template!r} has no list of names; "
                               "give the names (--sweep-names A,B) or a file (--sweep FILE)")
        names += known
    elif spec.names:
        names += as_list(spec.names) or []
    elif not spec.file:
        raise config_error("--sweep-template needs --sweep-names all|A,B,... or --sweep FILE")
    names = list(dict.fromkeys(names))
    if not names:
        raise config_error("the sweep lists no concepts")
    owner: dict[str, str] = {}
    for name in names:
        other = owner.setdefault(run_slug(name), name)
        if other != name:
            raise config_error(f"sweep concepts {other!r} and {name!r} would share the folder "
                               f"{run_slug(name)!r}; list one of them")
    return template, names


def concept_config(cfg: TrainConfig, template: str, name: str, folder: Path) -> TrainConfig:
    """The run's configuration for one concept: the template decides what is erased, the `prompt`
    section (if any) how, as for a single run (its own target is not the sweep's concept)."""
    prompts = [p.model_copy(update={"target": None}) for p in cfg.prompt_list()] or None
    return cfg.model_copy(update={
        "template": template, "template_name": name, "output_dir": str(folder), "prompt": prompts,
        "resume": any(folder.glob("*_state.pt")),  # interrupted earlier: continue it
    })


def run_sweep(cfg: TrainConfig, spec: SweepSpec, env: dist.DistEnv, console: Console, quiet: bool,
              ddp: DataParallel | None = None) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """This rank's share of the sweep; returns the concepts and every concept's final entry.

    Concept-parallel: this rank trains the concepts i % world_size == rank of those still to do.
    With `ddp`, every rank trains every concept together (and rank 0 keeps the record)."""
    from ..sampling.preview import write_previews
    from ..training.run import run_training

    template, names = sweep_concepts(spec, cfg)
    root = Path(cfg.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    state = SweepState(root, env.rank, {"template": template, "order": names})
    todo, entries = dist.from_main(lambda: state.plan(names, {n: run_slug(n) for n in names}))
    mine = todo if ddp is not None else todo[env.rank::env.world_size]
    records = ddp is None or ddp.is_main
    skipped = len(names) - len(todo)
    if skipped and env.is_main:
        console.print(f"sweep: {skipped} of {len(names)} concepts already done in {root}: skipped")
    for i, name in enumerate(mine, 1):
        entry = entries[name]
        folder = root / run_slug(name)
        concept_cfg = concept_config(cfg, template, name, folder)
        _say(env, ddp, console, quiet, f"sweep: {name!r} ({i}/{len(mine)}"
             f"{f' on rank {env.rank}' if env.distributed and ddp is None else ''})"
             f"{', resuming' if concept_cfg.resume else ''} -> {folder}")
        record = state.update if records else _no_record
        started = time.perf_counter()
        entry = record(name, entry, status="running", attempts=int(entry.get("attempts", 0)) + 1,
                       started_at=_now(), error=None, finished_at=None)
        try:
            path = run_training(concept_cfg, console=console, quiet=quiet, ddp=ddp, previewer=write_previews,
                                resume_hint="run the same command again to continue the sweep")
        except Exception as exc:  # one concept's failure must not stop the others
            message = one_line(exc)
            record(name, entry, status="failed", error=message, finished_at=_now(),
                   seconds=round(time.perf_counter() - started, 3))
            print(f"error: sweep concept {name!r} failed: {message}", file=sys.stderr)
            continue
        except BaseException:  # Ctrl-C / SystemExit: leave it resumable and say so
            record(name, entry, status="interrupted", seconds=round(time.perf_counter() - started, 3))
            raise
        record(name, entry, status="done", output=path.relative_to(root).as_posix(), finished_at=_now(),
               seconds=round(time.perf_counter() - started, 3))
    dist.barrier()  # every rank's part is final: rank 0 merges them
    return names, dist.from_main(state.finish)


def _no_record(name: str, entry: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return entry  # DDP ranks other than 0: rank 0 keeps the record


def _say(env: dist.DistEnv, ddp: DataParallel | None, console: Console, quiet: bool, text: str) -> None:
    # ranks other than 0 train without a progress bar (bars of several processes would garble the
    # terminal), so their one line per concept goes straight to stderr
    if env.is_main:
        console.print(text)
    elif ddp is None and not quiet:
        print(text, file=sys.stderr, flush=True)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def exit_code(names: list[str], entries: dict[str, dict[str, Any]]) -> int:
    """0 when every concept is done, else 1."""
    return 0 if all(entries.get(n, {}).get("status") == "done" for n in names) else 1


def print_summary(names: list[str], entries: dict[str, dict[str, Any]], console: Console) -> None:
    from rich.table import Table

    table = Table("concept", "status", "attempts", "seconds", "membrane / error", title="sweep")
    for name in names:
        e = entries.get(name, {})
        status = str(e.get("status", "pending"))
        style = {"done": "green", "failed": "red"}.get(status, "yellow")
        seconds = e.get("seconds")
        detail = e.get("error") if status == "failed" else e.get("output") or ""
        table.add_row(name, f"[{style}]{status}[/{style}]", str(e.get("attempts", 0)),
                      f"{seconds:.1f}" if isinstance(seconds, int | float) else "-", str(detail))
    console.print(table)
    counts = {s: sum(1 for n in names if entries.get(n, {}).get("status") == s) for s in ("done", "failed")}
    console.print(f"{counts['done']} of {len(names)} concepts done, {counts['failed']} failed")
