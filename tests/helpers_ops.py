"""Seeing which kernels an op call reached, with torch's own dispatch-mode hook (no mocks)."""

from __future__ import annotations

from torch.utils._python_dispatch import TorchDispatchMode


class OpLog(TorchDispatchMode):
    """Records the ops that reach the kernels (below autograd): the fused path shows spmctl's ops, the
    reference only aten's."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))

    def spmctl_ops(self) -> set[str]:
        return {op for op in self.ops if op.startswith("spmctl.")}
