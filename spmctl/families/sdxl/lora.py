"""SDXL membranes in kohya's SDXL LoRA layout.

Inside spmctl (and in a membrane file `spmctl train` writes, as the original SPM code writes it for
SDXL) a module is named after its diffusers path: `lora_unet_down_blocks_1_attentions_0_...`.
kohya's sd-scripts train SDXL on Stability's own ("sgm"/LDM) UNet, so an SDXL LoRA from kohya
names the same module `lora_unet_input_blocks_4_1_...`: that is the layout ComfyUI and A1111 read
natively for SDXL, and diffusers' `StableDiffusionXLPipeline.load_lora_weights` converts it
(`_maybe_map_sgm_blocks_to_diffusers`). `spmctl export` writes it.

The block arithmetic (L = the UNet's layers_per_block):
- `down_blocks.b.attentions.j` -> `input_blocks.{1 + b(L+1) + j}.1` (input block 0 is conv_in,
  and each level ends with a downsampler block);
- `mid_block.attentions.0`     -> `middle_block.1` (between its two resnets);
- `up_blocks.b.attentions.j`   -> `output_blocks.{b(L+1) + j}.1` (up levels have L+1 layers).
Inside a transformer the names agree (proj_in, transformer_blocks.N.attn1.to_q, ff.net.0.proj...).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ...errors import SpmctlError
from ...membrane.network import LORA_PREFIX

KOHYA_SDXL_METADATA = {"ss_base_model_version": "sdxl_base_v1-0"}  # what kohya writes for SDXL

_PATTERNS = (  # `.` in module paths, `_` in lora names
    (re.compile(r"^down_blocks[._](\d+)[._]attentions[._](\d+)[._](.+)$"), "input"),
    (re.compile(r"^mid_block[._]attentions[._]0[._](.+)$"), "middle"),
    (re.compile(r"^up_blocks[._](\d+)[._]attentions[._](\d+)[._](.+)$"), "output"),
)


def sgm_path(module_path: str, layers_per_block: int, sep: str = ".") -> str:
    """The sgm/LDM path of a diffusers module path inside one of the UNet's transformer blocks
    (`sep`: the separator of both, "." for module paths, "_" for lora names without their prefix)."""
    per_level = layers_per_block + 1
    for pattern, kind in _PATTERNS:
        m = pattern.match(module_path)
        if not m:
            continue
        if kind == "middle":
            return sep.join(("middle_block", "1", m.group(1)))
        level, layer, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        index = 1 + level * per_level + layer if kind == "input" else level * per_level + layer
        return sep.join((f"{kind}_blocks", str(index), "1", rest))
    raise SpmctlError(f"module {module_path!r} is not inside an SDXL UNet attention block")


def kohya_names(module_paths: Iterable[str], layers_per_block: int) -> dict[str, str]:
    """spmctl lora name (diffusers path) -> kohya SDXL lora name, for every adapted module."""
    return {LORA_PREFIX + p.replace(".", "_"): LORA_PREFIX + sgm_path(p, layers_per_block).replace(".", "_")
            for p in module_paths}


def layers_per_block_of(names: Iterable[str]) -> int:
    """The UNet's layers_per_block, read off the membrane's own module names: an up level holds
    layers_per_block + 1 attention blocks (a down level one fewer), and every one carries membranes."""
    up, down = [], []
    for name in names:
        m = re.match(r"^(up|down)_blocks_\d+_attentions_(\d+)_", name.removeprefix(LORA_PREFIX))
        if m:
            (up if m.group(1) == "up" else down).append(int(m.group(2)))
    if up:
        return max(up)
    if down:
        return max(down) + 1
    raise SpmctlError("no SDXL down or up attention block among the membrane's modules")


def to_kohya(tensors: dict) -> dict:
    """A membrane's tensors (keys `lora_unet_<diffusers path>.<suffix>`) under kohya's SDXL names."""
    modules = {key.partition(".")[0] for key in tensors}
    per_block = layers_per_block_of(modules)
    names = {m: LORA_PREFIX + sgm_path(m.removeprefix(LORA_PREFIX), per_block, "_") for m in modules}
    return rename(tensors, names)


def rename(tensors: dict, names: dict[str, str]) -> dict:
    """Tensors keyed `<name>.<suffix>` renamed by `names` (every name must be known)."""
    out = {}
    for key, value in tensors.items():
        name, dot, suffix = key.partition(".")
        if name not in names:
            raise SpmctlError(f"membrane key {key!r} is not a module of this SDXL UNet")
        out[names[name] + dot + suffix] = value
    return out
