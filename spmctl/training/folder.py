"""A training run's folder: file names, the lock that keeps a second run out, leftovers, cleanup.

Several runs (different concepts, or `save.name`s) share one `output_dir`: every file a run writes
starts with its name, `<name>_config.yaml`, `<name>_log.jsonl`, `<name>_summary.json`,
`<name>_state.pt`, `<name>_<step>steps.safetensors`, `<name>_last.safetensors`. Folders written
by earlier versions (a bare `config.yaml`, `log.jsonl`, `summary.json`) are still read, and moved
to the prefixed names when their run is resumed.

Only one `spmctl train` writes in a folder at a time: `.spmctl-train.lock` is held with `flock`
for the whole run (the kernel releases it when the process dies, however it dies) and records who
holds it, so a second run can say which process is in the way.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from ..errors import SpmctlError
from ..fileio import make_parents, remove_empty, remove_leftovers, write_error, write_text_atomic

LOCK = ".spmctl-train.lock"
PREVIEWS = "samples"  # save.sample_every_n_steps writes its images here
STATE_SUFFIX = "_state.pt"
OLD_LAYOUT = ("config.yaml", "log.jsonl", "summary.json")


class RunFolder:
    def __init__(self, path: Path, name: str) -> None:
        self.path = path
        self.name = name
        self._lock_fd: int | None = None
        self._created: list[Path] = []

    # -- file names -------------------------------------------------------------------------
    def file(self, suffix: str) -> Path:
        return self.path / f"{self.name}{suffix}"

    @property
    def config(self) -> Path:
        return self.file("_config.yaml")

    @property
    def log(self) -> Path:
        return self.file("_log.jsonl")

    @property
    def summary(self) -> Path:
        return self.file("_summary.json")

    @property
    def state(self) -> Path:
        return self.file(STATE_SUFFIX)

    @property
    def last(self) -> Path:
        return self.file("_last.safetensors")

    def step_file(self, step: int) -> Path:
        return self.file(f"_{step}steps.safetensors")

    # -- lifecycle ----------------------------------------------------------------------------
    def open(self) -> None:
        """Create the folder (remembering what was created), take the lock, remove leftovers."""
        self._created = make_parents(self.path / LOCK)
        self._lock()
        remove_leftovers(self.path)
        remove_leftovers(self.path / PREVIEWS)  # a preview image half written by a kill

    def close(self, failed: bool) -> None:
        """Release the lock. A failed run that saved nothing resumable leaves nothing behind:
        its config and log go, and the folders it created go when empty."""
        if self._lock_fd is None:  # never opened (or refused): nothing here is this run's
            return
        if failed and not self.state.exists():
            for path in (self.config, self.log):
                path.unlink(missing_ok=True)
        self._unlock()
        if failed:
            remove_empty(self._created)

    def _lock(self) -> None:
        lock = self.path / LOCK
        while True:
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:
                raise write_error(lock, exc) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise SpmctlError(f"{self.path}: another spmctl train is writing here ({holder}); "
                                  "wait for it to finish or choose another output_dir") from None
            # the previous holder may have removed the file between our open and our lock
            if os.path.exists(lock) and os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
            os.close(fd)
        owner = {"pid": os.getpid(), "host": socket.gethostname(),
                 "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(owner).encode())
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is None:
            return
        with contextlib.suppress(OSError):
            (self.path / LOCK).unlink()  # while still held: a waiting run re-checks the inode
        os.close(self._lock_fd)
        self._lock_fd = None

    # -- earlier layout, resume ---------------------------------------------------------------
    def adopt_old_layout(self) -> None:
        """Move a bare `config.yaml`/`log.jsonl`/`summary.json` to this run's names when they are
        this run's (the folder's only state file is this run's)."""
        states = sorted(self.path.glob(f"*{STATE_SUFFIX}"))
        if states != [self.state] or self.log.exists() or not (self.path / "log.jsonl").exists():
            return
        for old, new in zip(OLD_LAYOUT, (self.config, self.log, self.summary), strict=True):
            if (self.path / old).exists():
                os.replace(self.path / old, new)

    def truncate_log(self, step: int) -> None:
        """Drop log records past `step` (written after the checkpoint being resumed)."""
        if not self.log.exists():
            return
        kept = []
        for line in self.log.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a torn last line from a kill
            if isinstance(record, dict) and int(record.get("step", 0)) <= step:
                kept.append(line + "\n")
        write_text_atomic(self.log, "".join(kept))


def _read_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        owner = json.loads(os.read(fd, 4096).decode() or "{}")
        return f"pid {owner['pid']} on {owner['host']}, started {owner['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not said who it is yet"
