"""Custom ops: the fused membrane kernel (`csrc/`) and its pure-PyTorch reference."""

from spmctl.ops.fused import (
    MAX_CUDA_J,
    fused_supports,
    kernel_backend,
    linear_membrane,
    load_fused,
    membrane,
    membrane_,
)
from spmctl.ops.reference import membrane_reference

__all__ = [
    "MAX_CUDA_J", "fused_supports", "kernel_backend", "linear_membrane", "load_fused", "membrane", "membrane_",
    "membrane_reference",
]
