"""Ctrl-C during training: stop where the run can be saved."""

from __future__ import annotations

import signal
import threading


class DeferredInterrupt:
    """Ctrl-C during a training step takes effect after the step, where the weights, EMA and
    optimizer agree and can be saved; a second Ctrl-C stops at once. Off where signals cannot be
    caught (not the main thread) or must stop every process alike (several processes)."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> None:
        if self.enabled:
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            signal.signal(signal.SIGINT, self._previous)
