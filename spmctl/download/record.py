"""What `spmctl download` installed under a --dest root, so `--force` replaces only that.

The record is one JSON file, `<--dest>/.spmctl-downloads.json`, mapping each
destination (relative to the root) to the source it came from and the files it
held. `--force` may replace a destination only when it is recorded and holds no
file the download did not put there: a user's own files are never deleted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import SpmctlError
from ..fileio import write_text_atomic
from .manifest import Source

RECORD_NAME = ".spmctl-downloads.json"


def _path(root: Path) -> Path:
    return root / RECORD_NAME


def _load(root: Path) -> dict[str, dict[str, object]]:
    try:
        data = json.loads(_path(root).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    installed = data.get("installed") if isinstance(data, dict) else None
    return installed if isinstance(installed, dict) else {}


def files_under(folder: Path) -> set[str]:
    """Every file and link under `folder`, relative, without following links."""
    out = set()
    for here, dirs, files in os.walk(folder):
        rel = Path(here).relative_to(folder)
        out.update((rel / name).as_posix() for name in files)
        out.update((rel / name).as_posix() for name in dirs if (Path(here) / name).is_symlink())
    return out


def check_replaceable(root: Path, source: Source, dest: Path) -> None:
    """Refuse `--force` on a destination holding anything an earlier download did not install."""
    entry = _load(root).get(source.dest)
    recorded = set(entry.get("files", [])) if isinstance(entry, dict) else None  # type: ignore[arg-type]
    if recorded is None:
        raise SpmctlError(f"refusing to replace {dest}: it was not installed by `spmctl download` (no entry "
                          f"in {_path(root)}); move it away or choose another --dest")
    foreign = sorted(files_under(dest) - recorded)
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise SpmctlError(f"refusing to replace {dest}: {foreign[0]!r}{more} was not installed by "
                          "`spmctl download`; move your files away first")


def remember(root: Path, source: Source, dest: Path) -> str | None:
    """Record what now sits at `dest`; returns a warning when the record cannot be written."""
    installed = _load(root)
    installed[source.dest] = {"source": source.label, "url": source.url, "repo_id": source.repo_id,
                              "files": sorted(files_under(dest))}
    text = json.dumps({"version": 1, "installed": installed}, indent=1, sort_keys=True)
    try:
        write_text_atomic(_path(root), text)  # umask-honouring, so teammates can read the record
    except SpmctlError as exc:  # the download itself succeeded: say so, don't fail it
        return f"warning: cannot record the download ({exc}); " \
               "--force will refuse to replace it"
    return None
