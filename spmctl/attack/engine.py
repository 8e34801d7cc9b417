"""What every method's search shares: the prompts under attack, per-prompt draws, saved state.

An `Item` is one prompt under attack; an engine advances a batch of items one step at a time
(`step`), says what each item's adversarial prompt is now (`current`), and its objective on fixed
draws (`objective`). Randomness is drawn per item from generators seeded by (seed, step), so an
item's trajectory is the same alone or in any batch, and after a resume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from .tokens import Layout


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + step) % 2**63)


@dataclass
class Item:
    """One prompt under attack."""

    pid: int
    name: str
    job: Any  # sampling.generate.Job: prompt, seed, guidance, size
    concept: str
    judge: Any
    layout: Layout
    record: dict[str, Any] = field(default_factory=dict)  # what is known so far (saved with the state)
    state: Any = None  # the method's search state (TokenState, GAState)
    x0: torch.Tensor | None = None  # the target image's latents (1, 4, h, w)
    hidden: torch.Tensor | None = None  # the original prompt's last hidden state (1, 77, d)
    image: Path | None = None  # the dataset row's image of the concept, if it has one

    @property
    def step(self) -> int:
        if self.state is None:
            return 0
        return int(self.state["step"]) if isinstance(self.state, dict) else int(self.state.step)

    @property
    def label(self) -> str:
        return f"prompt {self.pid + 1} ({self.job.prompt[:40]!r})"


class Engine(Protocol):
    def step(self, items: list[Item]) -> None: ...

    def current(self, items: list[Item]) -> tuple[list[str], list[list[int]]]: ...

    def objective(self, items: list[Item]) -> list[float]: ...


def save_state(path: Path, item: Item) -> None:
    from ..fileio import atomic_write

    payload = {"state": item.state.to_dict()}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_state(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:  # weights_only: a state file is data, never code
        return torch.load(path, map_location="cpu", weights_only=True)["state"]
    except Exception:  # a torn file from an interruption: start that prompt over
        return None
