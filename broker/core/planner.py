"""The dispatch planner: how many quanta each worker holds at once (the running ones and those
queued behind them), for every transport, from what the workers declared, the durations learned
so far and the transport's cost profile; and which quanta may start by the resources they
request (its ``admission``, ``broker.core.admission``). Pure: plain numbers in, numbers out;
the core asks it and carries out what it decides. Must not know any transport beyond its
``TransportProfile``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from broker.core.admission import Admission, Budget

__all__ = ["FIXED", "DispatchPlanner", "PlanInputs", "TransportProfile", "window"]

# ``window``: nothing queued behind a running quantum where the spread of durations within
# labels exceeds this (W4's hidden spine: 1.8; durations at their label's mean: 0) ...
_MAX_SPREAD = 1.0
# ... for quanta of at least this many round trips on average (a round trip per quantum then
# costs a quarter of a quantum at most)
_COMMIT_TRIPS = 4


@dataclass(frozen=True, slots=True)
class TransportProfile:
    """What a driver's transport costs, as the planner needs it.

    ``trip_s``: a dispatch round trip (the core decides, the worker hears, its result comes
    back). A worker holds per thread ``window_min`` to ``window_max`` quanta, plus ``extra``
    on top of all its threads' (a batching transport keeps some in hand). ``order_rules``:
    queue nothing behind a running quantum where that costs more than it hides (a transport
    whose queued quanta are cheap to take back; a batching one keeps its minimum).
    ``replan_every_s``: how often the plan may change. ``batch``: a worker is sent quanta
    only once it holds half its capacity or less (and at least one per thread), then filled
    in one go, so the transport carries them in one message (Dask: one graph update)."""

    trip_s: float
    window_min: int
    window_max: int
    extra: int = 0
    order_rules: bool = True
    replan_every_s: float = 0.1
    batch: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.window_min <= self.window_max or self.extra < 0 or self.trip_s < 0:
            raise ValueError(f"inconsistent transport profile {self}")


# A profile that never adapts: every worker holds what it declared (the in-process driver,
# and tests that set capacities by hand).
FIXED = TransportProfile(trip_s=0.0, window_min=1, window_max=1, order_rules=False)


@dataclass(frozen=True, slots=True)
class PlanInputs:
    """What the run has learned that the plan depends on: the mean quantum duration (None
    before the first), how far durations stray from their label's mean (``Scheduler.spread``),
    what queueing costs per completion (``BrokerCore.prefetch_cost_s``) and how many workers
    there are."""

    mean_s: float | None
    spread: float | None
    inversion_s: float
    workers: int


def window(
    mean_s: float | None,
    trip_s: float,
    lo: int,
    hi: int,
    *,
    spread: float | None = None,
    inversion_s: float = 0.0,
    alone: bool = False,
) -> int | None:
    """How many quanta a worker (per thread) should hold: the running one and enough queued
    behind it to keep it busy through a dispatch round trip of ``trip_s`` with quanta of
    ``mean_s`` on average, within ``lo..hi``; None while no duration is known. Deep for short
    quanta; shallow for long ones, which are then not pinned to a worker early.

    Only the running one where a queued quantum costs more than it hides: while what
    finishing quanta release keeps outranking what was queued by more than a round trip
    (``inversion_s``), or where durations stray from their label's mean by more than the mean
    (``spread``) and quanta are long against the trip: the ranks cannot tell which quanta are
    long, and one queued behind a long one waits for all of it while what it was ranked
    against may turn out more critical. Neither applies to a worker ``alone``: it runs quanta
    one at a time, so their order cannot change the makespan, and no other worker could take
    a queued one."""
    if mean_s is None:
        return None
    if not alone and (
        inversion_s > trip_s
        or (spread is not None and spread > _MAX_SPREAD and mean_s >= _COMMIT_TRIPS * trip_s)
    ):
        return 1
    return max(lo, min(hi, 1 + math.ceil(trip_s / max(mean_s, 1e-6))))


class DispatchPlanner:
    """Decides each worker's capacity: ``threads`` times the per-thread window the profile and
    what was learned call for, plus the profile's ``extra``, never beyond what the worker
    declared it accepts (``declared``; 0: no limit of its own). ``admission`` decides which
    quanta may start by their resources (none limited by default)."""

    def __init__(self, profile: TransportProfile, admission: Admission | None = None) -> None:
        self.profile = profile
        self.admission = admission or Admission(Budget(), {}, lambda i: 0, [""])
        self.depth = profile.window_min  # per thread, until a duration is known
        self._next_plan = -math.inf

    def capacity(self, declared: int, threads: int) -> int:
        if self.profile is FIXED:
            return max(1, declared)
        wanted = max(1, threads) * self.depth + self.profile.extra
        return max(1, min(declared, wanted) if declared > 0 else wanted)

    def refill(self, capacity: int, threads: int) -> int:
        """How few quanta a worker of ``capacity`` holds before it is sent more (-1: it is
        sent one whenever a slot is free)."""
        if not self.profile.batch:
            return -1
        return min(capacity - 1, max(max(1, threads), capacity // 2))

    def due(self, now: float) -> bool:
        """Whether the plan may change now (``replan`` then; at most every
        ``replan_every_s``)."""
        return self.profile is not FIXED and now >= self._next_plan

    def replan(self, inputs: PlanInputs, now: float) -> bool:
        """Recompute the per-thread window; whether it changed (every worker's capacity must
        then be set again)."""
        p = self.profile
        rules = p.order_rules
        depth = window(
            inputs.mean_s,
            p.trip_s,
            p.window_min,
            p.window_max,
            spread=inputs.spread if rules else None,
            inversion_s=inputs.inversion_s if rules else 0.0,
            alone=inputs.workers <= 1,
        )
        if depth is None:
            return False  # from the first durations learned on
        self._next_plan = now + p.replan_every_s
        if depth == self.depth:
            return False
        self.depth = depth
        return True
