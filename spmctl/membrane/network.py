"""MembraneNetwork: K membranes attached to the layers a model family names (by default every
Linear/Conv2d inside a UNet's Transformer2DModels, SD 1.x's placement)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from spmctl.errors import SpmctlError
from spmctl.membrane.io import ALPHA, DOWN, UP
from spmctl.membrane.module import GateState, MembraneModule

LORA_PREFIX = "lora_unet_"
TRANSFORMER_CLASSES = ("Transformer2DModel",)  # matched by name: its import path moved across diffusers

GateSpec = float | int | Sequence[float] | torch.Tensor | None


def lora_name(module_path: str) -> str:
    """`down_blocks.0.attentions.0...to_q` -> `lora_unet_down_blocks_0_attentions_0..._to_q` (kohya)."""
    return LORA_PREFIX + module_path.replace(".", "_")


Target = tuple[str, nn.Module, str, nn.Module]


def find_targets(root: nn.Module, block_classes: Sequence[str] = TRANSFORMER_CLASSES,
                 layer_types: tuple[type, ...] = (nn.Linear, nn.Conv2d)) -> list[Target]:
    """(module path, parent, attribute, layer) for each `layer_types` layer inside a block whose class
    is named in `block_classes`, in `root.named_modules()` order (what a family's `membrane_targets`
    usually is)."""
    found: list[Target] = []
    for block_name, block in root.named_modules():
        if type(block).__name__ not in block_classes:
            continue
        for sub_name, layer in block.named_modules():
            if isinstance(layer, MembraneModule):
                raise SpmctlError("a membrane network is already attached to this UNet; detach it first")
            if isinstance(layer, layer_types):
                parent_name, _, attr = sub_name.rpartition(".")
                parent = block.get_submodule(parent_name) if parent_name else block
                found.append((f"{block_name}.{sub_name}" if block_name else sub_name, parent, attr, layer))
    return found


class MembraneNetwork:
    """Attaches on construction; `detach()` puts every original layer back.

    Not an nn.Module on purpose: `.to()`/`.half()` on it must not convert the UNet's own layers
    (which the wrappers hold). Use `to()` here for the membrane parameters only.
    """

    def __init__(
        self, unet: nn.Module, rank: int = 1, alpha: float | None = 1.0, num_membranes: int = 1, *,
        targets: list[Target] | None = None, name_of: Callable[[str], str] = lora_name,
    ) -> None:
        """`targets`: the layers to adapt (a family's `membrane_targets(denoiser)`; default
        `find_targets(unet)`); `name_of`: a layer path's key in membrane files (the family's `lora_name`)."""
        if rank < 1:
            raise SpmctlError(f"membrane rank must be >= 1, got {rank}")
        if num_membranes < 1:
            raise SpmctlError(f"num_membranes must be >= 1, got {num_membranes}")
        self.rank = int(rank)
        self.alpha = float(alpha) if alpha else float(rank)  # alpha 0/None means alpha = rank (scale 1)
        self.num_membranes = int(num_membranes)
        self.ranks = [self.rank] * self.num_membranes  # per membrane; a loaded file may have a lower rank
        self.alphas = [self.alpha] * self.num_membranes
        self._state = GateState(self.num_membranes)
        self._modules: dict[str, MembraneModule] = {}
        self._placement: dict[str, tuple[nn.Module, str]] = {}
        targets = find_targets(unet) if targets is None else targets
        if not targets:
            raise SpmctlError(f"no layer to carry a membrane found in this {type(unet).__name__}")
        for path, parent, attr, layer in targets:
            wrapper = MembraneModule(
                layer, name_of(path), self.rank, self.alpha, self.num_membranes, self._state
            )
            setattr(parent, attr, wrapper)
            self._modules[path] = wrapper
            self._placement[path] = (parent, attr)
        self.attached = True

    @classmethod
    def for_model(cls, model: object, rank: int = 1, alpha: float | None = 1.0,
                  num_membranes: int = 1) -> MembraneNetwork:
        """A network on a loaded model's denoiser, where its family places membranes and named its way
        (`model`: a `spmctl.families.ModelBundle`)."""
        family, denoiser = model.family, model.denoiser  # type: ignore[attr-defined]
        return cls(denoiser, rank, alpha, num_membranes, targets=family.membrane_targets(denoiser),
                   name_of=family.lora_name)

    # ------------------------------------------------------------------ structure
    @property
    def modules_count(self) -> int:
        return len(self._modules)

    @property
    def module_names(self) -> list[str]:
        return list(self._modules)

    def named_wrappers(self) -> Iterator[tuple[str, MembraneModule]]:
        """(module path, wrapper) for each adapted layer; named like `nn.Module.named_modules`, which this
        class is not (it is a plain object that wraps layers in place)."""
        yield from self._modules.items()

    def trainable_parameters(self) -> list[nn.Parameter]:
        params: list[nn.Parameter] = []
        for m in self._modules.values():
            params += [m.lora_down, m.lora_up]
        return params

    def parameters(self) -> list[nn.Parameter]:
        return self.trainable_parameters()

    def requires_grad_(self, flag: bool = True) -> MembraneNetwork:
        for p in self.trainable_parameters():
            p.requires_grad_(flag)
        return self

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> MembraneNetwork:
        """Moves/casts only the membrane parameters (not the UNet's base layers)."""
        for m in self._modules.values():
            for name in ("lora_down", "lora_up"):
                p = getattr(m, name)
                p.data = p.data.to(device=device, dtype=dtype)
            m.scale = m.scale.to(device=device)
        self._state.set(self._state.gates)  # drop gate copies cached for other devices
        return self

    def detach(self) -> None:
        """Put every original layer back in its parent; the UNet is then exactly as before."""
        if not self.attached:
            return
        for path, (parent, attr) in self._placement.items():
            setattr(parent, attr, self._modules[path].base)
        self.attached = False

    def attach(self) -> None:
        """Put the wrappers back after `detach()`: the same layers and parameters (training lends
        its UNet to a preview's membrane this way)."""
        if self.attached:
            return
        for path, (parent, attr) in self._placement.items():
            setattr(parent, attr, self._modules[path])
        self.attached = True

    # ------------------------------------------------------------------ gates
    def _gates_tensor(self, gates: GateSpec) -> torch.Tensor:
        k = self.num_membranes
        if gates is None:
            return torch.ones(1, k)
        if isinstance(gates, int | float):
            return torch.full((1, k), float(gates))
        t = torch.as_tensor(gates, dtype=torch.float32).detach()
        if t.dim() == 0:
            return t.reshape(1, 1).expand(1, k).clone()
        if t.dim() == 1:
            if t.numel() != k:
                raise SpmctlError(f"gates: expected {k} values (one per membrane), got {t.numel()}")
            return t.reshape(1, k).clone()
        if t.dim() == 2 and t.shape[1] == k:
            return t.clone()
        raise SpmctlError(
            f"gates: expected a number, {k} values or a (batch, {k}) tensor, got shape {tuple(t.shape)}"
        )

    def set_gates(self, gates: GateSpec = None) -> None:
        """None: all ones; a number: every sample and membrane; K values: per membrane; (B, K): per sample."""
        self._state.set(self._gates_tensor(gates))

    @property
    def gates(self) -> torch.Tensor:
        return self._state.gates

    @contextlib.contextmanager
    def gated(self, gates: GateSpec) -> Iterator[MembraneNetwork]:
        previous = self._state.gates
        self._state.set(self._gates_tensor(gates))
        try:
            yield self
        finally:
            self._state.set(previous)

    @contextlib.contextmanager
    def merged(self, gates: GateSpec = 1.0) -> Iterator[MembraneNetwork]:
        """The same gates for every sample and no gradient (e.g. the partial denoising of training):
        every adapted layer is put back in the UNet for the duration, holding a temporary weight
        W + Σ_k g_k·scale_k·up_k·down_k, so the UNet runs at its plain speed. The original weight
        tensors are put back afterwards (never modified, so nothing drifts). Where the merged copies
        would take more memory than `SPMCTL_MERGE_BUDGET_MB` (default 512), or a gradient is being
        recorded, this is `gated(gates)`.
        """
        g = self._gates_tensor(gates)
        if g.shape[0] != 1:
            raise SpmctlError("merged(): needs one gate per membrane, the same for every sample")
        budget = float(os.environ.get("SPMCTL_MERGE_BUDGET_MB", "512")) * 2**20
        need = sum(m.base.weight.numel() * m.base.weight.element_size() for m in self._modules.values())
        if need > budget or torch.is_grad_enabled() or not self.attached:
            with self.gated(gates):
                yield self
            return
        swapped: list[tuple[nn.Module, str, MembraneModule, nn.Parameter]] = []
        try:
            for path, wrapper in self._modules.items():
                parent, attr = self._placement[path]
                base = wrapper.base
                swapped.append((parent, attr, wrapper, base._parameters["weight"]))
                base._parameters["weight"] = nn.Parameter(wrapper.merged_weight(g[0]), requires_grad=False)
                setattr(parent, attr, base)
            yield self
        finally:
            for parent, attr, wrapper, weight in swapped:
                wrapper.base._parameters["weight"] = weight
                setattr(parent, attr, wrapper)

    # ------------------------------------------------------------------ weights (kohya layout)
    def _check_k(self, k: int) -> None:
        if not 0 <= k < self.num_membranes:
            raise SpmctlError(f"membrane index {k} out of range 0..{self.num_membranes - 1}")

    def state_dict_for(self, k: int = 0) -> dict[str, torch.Tensor]:
        """Membrane k's tensors under kohya keys (lora_down/lora_up weights and a 0-dim alpha)."""
        self._check_k(k)
        r = self.ranks[k]
        out: dict[str, torch.Tensor] = {}
        for m in self._modules.values():
            down = m.lora_down.detach()[k, :r].clone()
            up = m.lora_up.detach()[k, :, :r].clone()
            if m.is_conv:
                up = up[:, :, None, None]  # kohya stores the conv up as a 1x1 kernel
            out[m.lora_name + DOWN] = down
            out[m.lora_name + UP] = up
            out[m.lora_name + ALPHA] = (m.scale.detach()[k] * r).to(torch.float32).reshape(())
        return out

    def load_state_dict_for(self, k: int, tensors: dict[str, torch.Tensor]) -> None:
        """Load membrane k from kohya-keyed tensors; a rank below the network's is zero-padded.

        Validates everything before changing anything; the error names the first bad key.
        """
        self._check_k(k)
        plan: list[tuple[MembraneModule, torch.Tensor, torch.Tensor, float]] = []
        file_rank: int | None = None
        used: set[str] = set()
        for m in self._modules.values():
            kd, ku, ka = m.lora_name + DOWN, m.lora_name + UP, m.lora_name + ALPHA
            for key in (kd, ku):
                if key not in tensors:
                    raise SpmctlError(f"membrane weights lack key {key!r} (not a membrane for this UNet?)")
            down, up = tensors[kd], tensors[ku]
            r = down.shape[0] if down.dim() >= 1 else 0
            want_down = (r, *m.lora_down.shape[2:])
            want_up = (m.lora_up.shape[1], r) + ((1, 1) if m.is_conv else ())
            if tuple(down.shape) != want_down or not 1 <= r <= self.rank:
                raise SpmctlError(
                    f"shape mismatch for {kd!r}: got {tuple(down.shape)}, expected "
                    f"{(self.rank, *m.lora_down.shape[2:])}"
                )
            if tuple(up.shape) != want_up:
                raise SpmctlError(f"shape mismatch for {ku!r}: got {tuple(up.shape)}, expected {want_up}")
            if file_rank is not None and r != file_rank:
                raise SpmctlError(f"rank of {kd!r} is {r} but earlier modules have rank {file_rank}")
            file_rank = r
            alpha = float(tensors[ka]) if ka in tensors else float(r)
            plan.append((m, down, up.reshape(up.shape[0], r), alpha))
            used.update((kd, ku, ka))
        extra = sorted(key for key in tensors if key not in used)
        if extra:
            raise SpmctlError(
                f"membrane weights have unexpected key {extra[0]!r} (a membrane for another model?)"
            )
        assert file_rank is not None
        with torch.no_grad():
            for m, down, up, alpha in plan:
                m.lora_down[k].zero_()
                m.lora_up[k].zero_()
                m.lora_down[k, :file_rank].copy_(down)
                m.lora_up[k, :, :file_rank].copy_(up)
                m.scale[k] = (alpha if alpha else file_rank) / file_rank
        self.ranks[k] = file_rank
        self.alphas[k] = plan[0][3] if plan[0][3] else float(file_rank)

    # ------------------------------------------------------------------ files
    def save(
        self,
        path: str | Path,
        k: int = 0,
        *,
        prompts: Sequence[str],
        dtype: torch.dtype = torch.float32,
        extra_metadata: dict[str, str] | None = None,
    ) -> Path:
        from spmctl.membrane.io import save_membrane

        return save_membrane(
            path,
            self.state_dict_for(k),
            prompts=list(prompts),
            rank=self.ranks[k],
            alpha=self.alphas[k],
            dtype=dtype,
            extra_metadata=extra_metadata,
        )

    def load(self, path: str | Path, k: int = 0) -> list[str]:
        """Load a membrane file into slot k; returns its prompts (the erased concepts)."""
        from spmctl.membrane.io import load_membrane

        mf = load_membrane(path)
        try:
            self.load_state_dict_for(k, mf.tensors)
        except SpmctlError as exc:
            raise SpmctlError(f"{path}: {exc}") from None
        return mf.concepts
