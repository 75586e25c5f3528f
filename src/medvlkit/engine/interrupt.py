"""Stopping long work at a safe point: Ctrl-C (SIGINT) or SIGTERM become a flag that a loop checks between steps.

A training step interrupted half-way (weights updated, step counter not) cannot be checkpointed consistently, so
the first signal only asks the loop to stop after the step it is in; a second Ctrl-C stops at once.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

logger = logging.getLogger(__name__)


class StopRequest:
    """Context manager: while active, SIGINT/SIGTERM set :attr:`requested` instead of raising.

    Outside the main thread (where Python cannot install handlers) it does nothing and the usual
    ``KeyboardInterrupt`` applies.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}  # what signal.signal returned: a handler, SIG_DFL or None

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("%s received: stopping after the current step (Ctrl-C again to stop at once)",
                       signal.Signals(signum).name)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
