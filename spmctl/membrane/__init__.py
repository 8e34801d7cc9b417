"""The semi-permeable membrane: K gated rank-r adapters on the UNet's transformer layers."""

from spmctl.membrane.io import MembraneFile, load_membrane, save_membrane
from spmctl.membrane.module import GateState, MembraneModule
from spmctl.membrane.network import LORA_PREFIX, MembraneNetwork, lora_name

__all__ = [
    "LORA_PREFIX",
    "GateState",
    "MembraneFile",
    "MembraneModule",
    "MembraneNetwork",
    "load_membrane",
    "lora_name",
    "save_membrane",
]
