"""The consoles spmctl writes to, and `-q`: low level (no torch, no CLI), so every layer can use them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


def table_console() -> Console:
    """A console for tables on stdout: the terminal's width (or COLUMNS) so they fit it; piped
    into a file or a script without COLUMNS, unbounded, so each row stays one line."""
    import os
    import sys

    from rich.console import Console

    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return Console()
    return Console(width=100_000)


def stderr_console(quiet: bool = False) -> Console:
    from rich.console import Console

    if quiet:
        quiet_mode()
    return Console(stderr=True, quiet=quiet)


def quiet_mode() -> None:
    """`-q`: errors only. Progress bars (ours, the hub's, tqdm's), library logging, Python
    warnings and spmctl's own `warning:`/`note:` lines are dropped; `error` lines still show."""
    import logging
    import os
    import sys
    import warnings

    for var in ("HF_HUB_DISABLE_PROGRESS_BARS", "TQDM_DISABLE", "DIFFUSERS_NO_ADVISORY_WARNINGS"):
        os.environ[var] = "1"
    for var in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
        os.environ[var] = "error"
    # inherited by processes started from here (DDP/sweep workers): their Python warnings, and torch's
    # C++ warnings (gloo, NCCL; read when torch is imported), are dropped from the start
    os.environ["PYTHONWARNINGS"] = "ignore"
    os.environ["TORCH_CPP_LOG_LEVEL"] = "ERROR"
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    if not isinstance(sys.stderr, _DropNotices):
        sys.stderr = _DropNotices(sys.stderr)


class _DropNotices:
    """stderr without the lines that start with `warning:` or `note:` (the rest passes through)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._partial = ""

    def write(self, text: str) -> int:
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            if not line.lstrip().startswith(("warning:", "note:")):
                self._stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        if self._partial and not self._partial.lstrip().startswith(("warning:", "note:")):
            self._stream.write(self._partial)
        self._partial = ""
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextmanager
def stdout_on_stderr() -> Iterator[None]:
    """Inside, whatever this process or a process it starts writes to stdout goes to stderr.

    For a command whose stdout carries only its result (`spmctl benchmark`'s table) while the
    commands it drives print theirs there (`spmctl train` prints each membrane's path): fd 1 itself
    is pointed at stderr, so launched training processes are covered too."""
    import os
    import sys

    saved: int | None = None
    try:
        if sys.stdout is not None:  # None: started with stdout closed (`>&-`)
            sys.stdout.flush()
        saved = os.dup(1)
        os.dup2(2, 1)
    except OSError:  # no fd 1 or 2 to point: nothing to keep apart
        if saved is not None:
            os.close(saved)
            saved = None
    try:
        yield
    finally:
        if saved is not None:
            try:
                if sys.stdout is not None:
                    sys.stdout.flush()
            finally:
                os.dup2(saved, 1)
                os.close(saved)
