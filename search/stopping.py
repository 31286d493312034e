"""How a long command stops: SIGTERM and SIGHUP (what docker stop, Kubernetes, SLURM and a closing
terminal send) become ``Stopped``, a ``KeyboardInterrupt``, so that a search or a final training
stops as it does on Ctrl-C: what is running is marked, what is done is kept, and the rerun resumes."""

from __future__ import annotations

import contextlib
import signal
from typing import Iterator


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP: the command stops as it does on Ctrl-C."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.reason = f"stopped by {name}"


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into ``Stopped`` for the duration (main thread only)."""
    def handler(number, frame):
        raise Stopped(signal.Signals(number).name)

    previous = {}
    try:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: leave the signals alone
        previous = {}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
