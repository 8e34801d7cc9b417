"""Which model family a model is: by name (`pretrained_model.family`), by tiny name, or detected.

Families come from the `register_families` plugin hook (spmctl's own are default plugins). Detection
reads only what is cheap: a folder's (or the hub cache's) model_index.json and a `.safetensors`
file's tensor names. Each family's `detect` says yes or no; the first that says yes (built-ins first,
in registration order) wins. A source that tells nothing (a `.ckpt`, a hub id not downloaded yet, a
folder without model_index.json) is SD 1.x/2.x, what spmctl loaded before it knew other families;
`pretrained_model.family` chooses otherwise.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from ..errors import SpmctlError, config_error, did_you_mean, one_line
from .base import LoadOptions, ModelBundle, ModelProbe, read_json

HOOK = "register_families"
DEFAULT_FAMILY = "sd1"
SINGLE_FILE_SUFFIXES = (".ckpt", ".safetensors", ".pt", ".bin", ".pth")


def families() -> dict[str, Any]:
    """Every registered family by name (third-party ones wrapped so their failures name the plugin)."""
    from ..plugins import _guarded, collect

    return {name: _guarded(HOOK, family) for name, family in collect(HOOK).items()}


def get_family(name: str, key: str = "pretrained_model.family") -> Any:
    table = families()
    if name in table:
        return table[name]
    known = ", ".join(sorted(table))
    raise config_error(f"{key} {name!r}: unknown model family{did_you_mean(name, table)}; known: {known}")


def tiny_names() -> dict[str, str]:
    """`-m` name of every built-in tiny model -> its family."""
    out: dict[str, str] = {}
    for name, family in families().items():
        for tiny in family.tiny_names:
            out.setdefault(tiny, name)
    return out


def probe(source: str) -> ModelProbe:
    """What can be known about `source` without loading it."""
    if source in tiny_names():
        return ModelProbe(source, "tiny")
    local = Path(source).expanduser()
    if local.is_dir():
        return ModelProbe(source, "folder", model_index=read_json(local / "model_index.json"))
    if local.suffix.lower() in SINGLE_FILE_SUFFIXES:
        keys = safetensors_keys(local) if local.suffix.lower() == ".safetensors" else None
        return ModelProbe(source, "file", keys=keys)
    return ModelProbe(source, "hub", model_index=_cached_model_index(source))


def safetensors_keys(path: Path) -> frozenset[str] | None:
    """A .safetensors file's tensor names from its JSON header (no tensor is read); None if unreadable."""
    try:
        with path.open("rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            if size > 100 * 2**20:  # a header that large is not a checkpoint's
                return None
            header = json.loads(fh.read(size))
    except (OSError, ValueError, struct.error):
        return None
    return frozenset(k for k in header if k != "__metadata__") if isinstance(header, dict) else None


def _cached_model_index(hub_id: str) -> dict[str, Any] | None:
    """The hub model's model_index.json when it is in the local cache (detection never downloads)."""
    if hub_id.count("/") != 1:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(hub_id, "model_index.json")
    except Exception:  # an odd id or cache: detection has nothing to go on, not an error
        return None
    return read_json(Path(found)) if isinstance(found, str) else None


def detect(source: str, forced: str | None = None) -> Any:
    """The family of the model at `source`; `forced` (pretrained_model.family) skips detection."""
    if forced:
        return get_family(forced)
    table = families()
    info = probe(source)
    if info.kind == "tiny":
        return table[tiny_names()[source]]
    from ..plugins import warn

    for family in table.values():
        try:
            if family.detect(info):
                return family
        except SpmctlError as exc:  # a third-party family's detect failing: said, and skipped
            warn(f"{exc} (skipped while detecting {source}'s family)")
    if info.model_index is None and info.keys is None:
        return get_family(DEFAULT_FAMILY)
    what = info.pipeline_class or ("a single-file checkpoint" if info.kind == "file" else "this model")
    raise SpmctlError(f"{source}: no model family handles {what} (known: {', '.join(sorted(table))}); "
                      "set pretrained_model.family (--family) to the one it is")


def load_model(source: str, *, family: str | None = None, **options: Any) -> ModelBundle:
    """Detect (or take) the family of `source` and load it; `options` are `LoadOptions` fields."""
    from ..models.loading import quiet_libraries

    quiet_libraries()  # library chatter (optional backends...) is not about the user's run
    chosen = detect(source, family)
    try:
        return chosen.load(source, LoadOptions(**options))
    except SpmctlError:
        raise
    except Exception as exc:  # a family's loader failing outside its own checks: one line, named
        raise SpmctlError(f"{source}: cannot load as {chosen.name}: {one_line(exc, limit=300)}") from None
