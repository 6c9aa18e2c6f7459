"""The dispatch planner, alone and inside the core: how many quanta each worker holds, by
transport profile, learned durations and what workers declare. Stepped with chosen times."""

from __future__ import annotations

import pytest

from broker.core.events import (
    ResultReceived,
    WorkerCapacity,
    WorkerHeard,
    WorkerJoined,
    WorkerLeft,
    WorkerReady,
)
from broker.core.planner import FIXED, DispatchPlanner, PlanInputs, TransportProfile, window
from broker.core.state import QState
from broker.drivers.dask_engine import transport_profile as dask_profile
from broker.drivers.zmq_server import transport_profile as local_profile
from common.config import ExecutionConfig
from tests.graphs import independent
from tests.unit.harness import Harness, result

A, B = b"wa", b"wb"
LOCAL = local_profile(ExecutionConfig(num_workers=2))  # trip 1 ms, 2..9 quanta a worker


def cap(h: Harness, worker: bytes) -> int:
    view = h.core.worker(worker)
    return 0 if view is None else view.capacity


def learned(mean_s: float, workers: int = 2, **kw: float) -> PlanInputs:
    return PlanInputs(mean_s, kw.get("spread"), kw.get("inversion_s", 0.0), workers)


def test_short_quanta_are_queued_deep_and_long_ones_shallow() -> None:
    planner = DispatchPlanner(LOCAL)
    assert planner.capacity(9, 1) == 2  # before anything is learned: 1 + prefetch
    assert planner.replan(learned(0.00005), now=0.0)  # 50 us quanta: as deep as declared
    assert planner.capacity(9, 1) == 9
    assert planner.capacity(4, 1) == 4  # never beyond what the worker accepts
    assert not planner.due(0.05)  # (the plan changes at most every replan_every_s)
    assert planner.due(0.1) and planner.replan(learned(0.5), now=0.1)  # long: 1 + prefetch
    assert planner.capacity(9, 1) == 2


def test_each_transport_plans_by_its_own_profile() -> None:
    # Given the same learned durations (2 ms quanta, spread far beyond their label's mean)
    inputs = learned(0.002, spread=1.8)
    local = DispatchPlanner(LOCAL)
    dask = DispatchPlanner(dask_profile(ExecutionConfig(num_workers=2, prefetch=1)))
    local.replan(inputs, 0.0)
    dask.replan(inputs, 0.0)
    # Then the local one covers its 1 ms trip (the spread rule waits for longer quanta) and
    # Dask its 10 ms one: per thread, plus its prefetch in hand, for workers of any size
    assert local.capacity(9, 1) == 2
    assert dask.capacity(0, 1) == 6 + 1
    assert dask.capacity(0, 4) == 4 * 6 + 1
    # and for long quanta Dask keeps its batching minimum where the local one queues nothing
    local.replan(learned(0.1, inversion_s=0.05), 1.0)
    dask.replan(learned(0.1, inversion_s=0.05), 1.0)
    assert local.capacity(9, 1) == 1 and dask.capacity(0, 1) == 2 + 1


def test_a_lone_worker_keeps_its_queue_whatever_the_order_rules_say() -> None:
    planner = DispatchPlanner(LOCAL)
    planner.replan(learned(0.002, workers=1, inversion_s=0.05), 0.0)
    assert planner.capacity(9, 1) == 2


def test_a_fixed_profile_gives_each_worker_what_it_declared() -> None:
    planner = DispatchPlanner(FIXED)
    assert not planner.due(100.0)
    assert planner.capacity(3, 1) == 3 and planner.capacity(0, 1) == 1


def test_inconsistent_profiles_are_refused() -> None:
    with pytest.raises(ValueError, match="profile"):
        TransportProfile(0.001, window_min=3, window_max=2)


def test_the_core_resizes_workers_when_the_plan_changes() -> None:
    # Given two local-profile workers that accept 9 quanta each, and 50 us quanta
    h = Harness(independent(40), workers=2, transport=LOCAL)
    h.step(WorkerJoined(A, 1, "host", 9, True), WorkerReady(A))
    h.step(WorkerJoined(B, 2, "host", 9, True), WorkerReady(B))
    assert len(h.dispatches(A)) == 2 and len(h.dispatches(B)) == 2  # 1 + prefetch each
    assert cap(h, A) == 2 and cap(h, B) == 2
    # When short durations are learned
    done = [ResultReceived(B, result(d, duration_s=0.00005)) for d in h.dispatches(B)]
    h.step(*done, at=0.2)
    # Then every worker holds as many as it accepts, and is sent them at once
    assert cap(h, A) == 9 and cap(h, B) == 9
    assert len(h.dispatches(A)) == 9 - 2 and len(h.dispatches(B)) == 9


def test_a_worker_declaring_less_gets_less() -> None:
    h = Harness(independent(40), workers=1, transport=LOCAL)
    h.step(WorkerJoined(A, 1, "host", 9, True), WorkerReady(A))
    (d, _) = h.dispatches(A)
    h.step(ResultReceived(A, result(d, duration_s=0.00005)), WorkerHeard(A), at=0.2)
    assert cap(h, A) == 9
    h.step(WorkerCapacity(A, 3), at=0.3)
    assert cap(h, A) == 3


def test_a_worker_lost_mid_prefetch_gives_back_everything_it_held() -> None:
    # Given a worker holding a deep queue of short quanta
    h = Harness(independent(20), workers=2, transport=LOCAL, retries=1)
    h.step(WorkerJoined(A, 1, "host", 9, True), WorkerReady(A))
    h.step(WorkerJoined(B, 2, "host", 9, True), WorkerReady(B))
    done = [ResultReceived(B, result(d, duration_s=0.00005)) for d in h.dispatches(B)]
    h.step(*done, at=0.2)
    held = {d.quantum_id for d in h.core.registry.get(A).in_flight.values()}  # type: ignore[union-attr]
    assert len(held) == 9
    # When it is lost
    h.step(WorkerLeft(A, "gone"), at=0.3)
    # Then none of it is lost for good: the running one is retried, the queued ones go back
    # to B (within B's own capacity) or the ready queue, none failed
    assert all(h.state(q) in (QState.RUNNING, QState.READY) for q in held)
    assert cap(h, A) == 0


def test_a_workers_window_covers_a_round_trip_with_its_quanta() -> None:

    assert window(None, 0.001, 2, 9) is None  # nothing learned yet: the driver keeps its own
    assert window(0.00005, 0.001, 2, 9) == 9  # 50 us quanta: as deep as allowed
    assert window(0.0004, 0.001, 2, 9) == 4  # 1 running + 3 queued cover a 1 ms trip
    assert window(0.2, 0.001, 2, 9) == 2  # long quanta: the running one and the minimum
    assert window(0.0, 0.001, 2, 9) == 9  # a zero duration does not divide by zero


def test_nothing_is_queued_where_durations_stray_far_from_their_labels_means() -> None:

    # Durations within a label spread wider than their mean (a hidden long one among short
    # ones): the ranks cannot tell which quanta are long, so none waits behind another ...
    assert window(0.0074, 0.001, 2, 9, spread=1.8) == 1
    # ... unless quanta are so short that a round trip per quantum would cost more
    assert window(0.002, 0.001, 2, 9, spread=1.8) == 2
    assert window(0.00005, 0.001, 2, 9, spread=1.8) == 9
    # Durations close to their label's mean keep the window
    assert window(0.005, 0.001, 2, 9, spread=0.3) == 2


def test_nothing_is_queued_while_what_finishing_quanta_release_outranks_it() -> None:

    # Inversions cost more than the round trip a queued quantum hides: none queued
    assert window(0.005, 0.001, 2, 9, inversion_s=0.002) == 1
    assert window(0.005, 0.001, 2, 9, inversion_s=0.0005) == 2


def test_a_lone_worker_keeps_its_queue_whatever_the_durations() -> None:

    # One worker runs quanta one at a time: their order cannot change the makespan and no
    # other worker could take a queued one, so a round trip per quantum would buy nothing
    assert window(0.0074, 0.001, 2, 9, spread=1.8, alone=True) == 2
    assert window(0.005, 0.001, 2, 9, inversion_s=0.002, alone=True) == 2
    assert window(None, 0.001, 2, 9, spread=1.8, alone=True) is None


def test_a_batching_transport_refills_a_worker_only_when_it_runs_low() -> None:
    # Given a Dask-profile worker (one thread: 2 + prefetch 1 = 3 quanta) and 10 ready quanta
    h = Harness(independent(10), workers=1, transport=dask_profile(ExecutionConfig()))
    h.step(WorkerJoined(A, 1, "host", 0, False, threads=1), WorkerReady(A))
    first = h.dispatches(A)
    assert len(first) == 3
    # When one ends, it still holds 2 (above its refill mark of 1): nothing is sent
    h.step(ResultReceived(A, result(first[0])), WorkerHeard(A), at=0.1)
    assert h.dispatches(A) == []
    # When a second ends, it is down to its mark: it is filled up again in one go
    h.step(ResultReceived(A, result(first[1])), WorkerHeard(A), at=0.2)
    assert len(h.dispatches(A)) == 2
    assert cap(h, A) == 3


def test_a_transport_without_batching_is_sent_a_quantum_for_every_free_slot() -> None:
    h = Harness(independent(10), workers=1, transport=LOCAL)
    h.step(WorkerJoined(A, 1, "host", 9, True), WorkerReady(A))
    first = h.dispatches(A)
    assert len(first) == 2
    h.step(ResultReceived(A, result(first[0], duration_s=0.5)), WorkerHeard(A), at=0.05)
    assert len(h.dispatches(A)) == 1
