"""The memory-pressure watch: admission trusts requests, this watches what is measured.

Pressure is when the memory the running quanta measure (their executor processes' trees, as
the agents report it) passes the memory budget, or the host's available memory falls below
the reserve (undeclared quanta that grow, other users of the machine). Under pressure nothing
new starts; if it lasts ``GRACE_S``, the most recently started quantum is stopped and put back
in the queue (not a failure, not an attempt), then another each ``GRACE_S`` while it lasts.
The broker, the agents and finished work are never what is given up: a stopped quantum is
the cheapest loss. Pure: measurements come in as numbers with an explicit ``now``.
"""

from __future__ import annotations

import math

__all__ = ["ALLOWANCE", "ALLOWANCE_PER_QUANTUM_MB", "GRACE_S", "PressureWatch"]

GRACE_S = 2.0  # pressure this long stops a quantum; then one more each GRACE_S while it lasts
# What the running quanta measure may pass the budget by this share, and by this much for each,
# before it is pressure: what an executor allocates around a task is not in its request (the
# agents allow the same before killing a quantum over its request)
ALLOWANCE = 0.05
ALLOWANCE_PER_QUANTUM_MB = 16.0


class PressureWatch:
    """``budget_mb``: the run's memory budget (inf: none); ``reserve_mb``: the host's
    available memory below which there is pressure (None: the host is not watched)."""

    def __init__(self, budget_mb: float, reserve_mb: float | None) -> None:
        self._budget = budget_mb
        self._reserve = reserve_mb
        self._measured: dict[bytes, float] = {}  # worker -> MiB its running quanta use now
        self._available: float | None = None
        self._since: float | None = None  # pressure began
        self._next_stop = -math.inf
        self._why: str | None = None
        self._stale = False  # a measurement came in since ``_why`` was worked out

    def measured(self, worker: bytes, mib: float | None) -> None:
        """``worker``'s executor tree uses ``mib`` now (None: nothing running there)."""
        if mib is None:
            if self._measured.pop(worker, None) is None:
                return
        else:
            self._measured[worker] = mib
        self._stale = True

    def ended(self, worker: bytes) -> None:
        """What ran on ``worker`` ended: what it measured was that quantum's, not the next
        one's (its next heartbeat says what that uses)."""
        self.measured(worker, None)

    def host(self, available_mb: float) -> None:
        self._available = available_mb
        self._stale = True

    def forget(self, worker: bytes) -> None:
        self._measured.pop(worker, None)
        self._stale = True

    @property
    def in_use_mb(self) -> float:
        return sum(self._measured.values())

    def why(self) -> str | None:
        """What the pressure is, if there is any now."""
        used, available, reserve = self.in_use_mb, self._available, self._reserve
        allowed = self._budget * (1 + ALLOWANCE) + ALLOWANCE_PER_QUANTUM_MB * len(self._measured)
        if used > allowed:
            return f"the running quanta use {used:,.0f} MiB, over the budget of {self._budget:,.0f}"
        if reserve is not None and available is not None and available < reserve:
            return (
                f"the host has {available:,.0f} MiB available, under the reserve of {reserve:,.0f}"
            )
        return None

    def check(self, now: float) -> tuple[bool, bool]:
        """(whether there is pressure now: admit nothing; whether to stop a quantum now)."""
        if self._stale:
            self._why, self._stale = self.why(), False
        if self._why is None:
            self._since = None
            return False, False
        if self._since is None:
            self._since = now
        if now - self._since >= GRACE_S and now >= self._next_stop:
            self._next_stop = now + GRACE_S
            return True, True
        return True, False

    def next_deadline(self) -> float | None:
        """When a stop could be due while the pressure lasts."""
        if self._since is None:
            return None
        return max(self._since + GRACE_S, self._next_stop)
