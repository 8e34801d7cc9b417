"""Stop requests: Ctrl-C (SIGINT) and SIGTERM ask the loop to save at the next step boundary.

SIGTERM is what job schedulers (Slurm, Kubernetes, systemd) send before they kill: it is treated
like Ctrl-C, and the run exits 143 (128 + 15) as a process ended by SIGTERM would. A second Ctrl-C
within `DOUBLE_TAP` seconds of the first is taken as impatience, not as a new order: one line says
that the step is being saved. A later one quits at once without saving the step in progress
(atomic writes leave the last saved files whole). Once a stop is saved, the handler stays until
the process exits, so a Ctrl-C during the exit says so rather than printing a traceback.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

DOUBLE_TAP = 2.0
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class StopRequest:
    def __init__(self) -> None:
        self.signum: int | None = None
        self.at = 0.0
        self.remote = False  # another DDP rank was asked to stop
        self.saved_at: int | None = None  # the step saved on the way out

    @property
    def requested(self) -> bool:
        return self.signum is not None or self.remote

    @property
    def what(self) -> str:
        return "terminated (SIGTERM)" if self.signum == signal.SIGTERM else "interrupted"

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signum, 130) if self.signum is not None else 130


class QuitNow(KeyboardInterrupt):
    """A Ctrl-C after the first one's grace: stop without saving the step in progress."""


@contextlib.contextmanager
def deferred_stop() -> Iterator[StopRequest]:
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: Any) -> None:
        if stop.saved_at is not None:
            print(f"already saved at step {stop.saved_at}; exiting", file=sys.stderr, flush=True)
        elif stop.signum is None:
            stop.signum, stop.at = signum, time.monotonic()
        elif signum == signal.SIGINT and time.monotonic() - stop.at > DOUBLE_TAP:
            raise QuitNow
        else:
            print("stopping: saving at the end of this step (Ctrl-C again to quit without saving it)",
                  file=sys.stderr, flush=True)

    previous = {s: signal.signal(s, handler) for s in EXIT_CODES}
    try:
        yield stop
    finally:
        if stop.saved_at is None:
            for s, old in previous.items():
                signal.signal(s, old)
