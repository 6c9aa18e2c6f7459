"""What every driver does alike for the people watching a run: progress every so often, and
answers to ``zmpexec status`` / ``cancel``. Decides nothing about quanta; touches no socket
(each driver sends the reply on its own).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from broker.core.events import StopRequested
from common.protocol import Cancel, StatusReply, StatusRequest
from common.status import RunStatus

__all__ = ["Progress", "ProgressCallback", "answer_control"]

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[RunStatus], None]


class Progress:
    """Hands the run's status to ``callback`` (if any) every ``interval_s``."""

    def __init__(self, callback: ProgressCallback | None, interval_s: float) -> None:
        self.callback = callback
        self._interval_s = interval_s
        self._next = 0.0

    def next_at(self) -> float | None:
        """When the next report is due (None: nobody is watching)."""
        return None if self.callback is None else self._next

    def tick(self, status: Callable[[float], RunStatus], now: float) -> None:
        """Report ``status(now)`` if a report is due."""
        if self.callback is None or now < self._next:
            return
        self._next = now + self._interval_s
        self.callback(status(now))


def answer_control(
    msg: StatusRequest | Cancel, status: RunStatus
) -> tuple[StatusReply, StopRequested | None]:
    """The reply to a control client's request, and the stop it asks for (a cancel: drain, or
    with ``abort`` kill what runs)."""
    stop = None
    if isinstance(msg, Cancel):
        logger.warning("%s requested by a control client", "abort" if msg.abort else "drain")
        stop = StopRequested("cancelled by request", graceful=not msg.abort)
    return StatusReply(status.to_dict()), stop
