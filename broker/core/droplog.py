"""Warnings about dropped input, at most one per kind per interval: a peer throwing garbage
must not flood the log (or the disk) while the broker keeps serving."""

from __future__ import annotations

import logging
import time

__all__ = ["DropLog"]


class DropLog:
    """``warn(kind_format, *args)``: log now, or count it until the kind's interval is over."""

    def __init__(self, logger: logging.Logger, interval_s: float = 1.0) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warn(self, fmt: str, *args: object, now: float | None = None) -> None:
        """Log, unless this kind was logged less than the interval before ``now``."""
        now = time.monotonic() if now is None else now
        if now - self._last.get(fmt, -self._interval_s) < self._interval_s:
            self._suppressed[fmt] = self._suppressed.get(fmt, 0) + 1
            return
        self._last[fmt] = now
        quiet = self._suppressed.pop(fmt, 0)
        if quiet:
            self._logger.warning(fmt + " (and %d like it not logged)", *args, quiet)
        else:
            self._logger.warning(fmt, *args)
