"""Ctrl-C (SIGINT) or SIGTERM during training: stop where the run can be saved.

torchrun turns the terminal's Ctrl-C into SIGTERM for its workers (and a scheduler's stop is a
SIGTERM too), so both signals take the one path: the run stops after the current step, saves it
and says so.
"""

from __future__ import annotations

import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class DeferredInterrupt:
    """A stop signal during a training step takes effect after the step, where the weights, EMA
    and optimizer agree and can be saved; a second one stops at once. Off where signals cannot
    be caught (not the main thread). Under several processes the trainer stops when any of them
    was signalled (`requested` is this process's own)."""

    def __init__(self) -> None:
        self.enabled = threading.current_thread() is threading.main_thread()
        self.requested = False

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> None:
        if self.enabled:
            self._previous = {sig: signal.signal(sig, self._handle) for sig in SIGNALS}

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
