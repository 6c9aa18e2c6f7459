"""A run always ends: the core keeps its local workers supplied, judges each worker by its
agent's own liveness, and gives up (stopping the run with a reason) when no worker can be
had. Driven with events and chosen times: no processes.
"""

from __future__ import annotations

from typing import Any

import pytest

from broker.core import BACKSTOP_GRACE_S
from broker.core.events import (
    ExecutorGone,
    ForgetWorker,
    KillWorker,
    ProcessExited,
    ProcessStarted,
    ResultReceived,
    SpawnFailed,
    SpawnWorkers,
    StopRun,
    WorkerHeard,
    WorkerJoined,
    WorkerLeft,
    WorkerReady,
)
from broker.core.state import QState
from broker.core.supply import BACKOFF_MAX_S, BACKOFF_S, MAX_START_FAILURES, WorkerSupply
from common.protocol import ExecutorExited, ResultStatus
from tests.graphs import independent
from tests.unit.harness import Harness, result

A, B = b"wa", b"wb"
KILLED = "killed by signal 9 (SIGKILL)"


def spawned(h: Harness) -> int:
    return sum(a.count for a in h.of(SpawnWorkers))


def supplied(workers: int = 2, quanta: int = 4, **config: Any) -> Harness:
    """A core that spawns its ``workers`` (pids 101, 102, ...), all started, none joined."""
    config.setdefault("startup_timeout_s", 5.0)
    h = Harness(independent(quanta), workers=workers, spawns=True, **config)
    assert spawned(h) == workers
    h.step(*(ProcessStarted(101 + i) for i in range(workers)))
    return h


def up(h: Harness, worker: bytes, pid: int) -> None:
    h.step(WorkerJoined(worker, pid, "host", 1, True), WorkerReady(worker, 1))


def exited(generation: int, last_seq: int, running: bool) -> ExecutorExited:
    status = ResultStatus.FAILURE
    return ExecutorExited(generation, last_seq, running, status, -9, None, "killed", 1.0, 2.0, None)


# ---------------------------------------------------------------------- replacement
def test_a_killed_worker_is_replaced_however_often_it_happens() -> None:
    # Given one local worker, killed every time it is up (no per-run budget may run out)
    h = supplied(workers=1, quanta=1, retries=100)
    pid = 101
    for n in range(30):
        up(h, A + bytes([n]), pid)
        h.step(ProcessExited(pid, KILLED), at=h.now + 2.0)
        # Then a replacement is asked for every time
        assert spawned(h) == 1, f"no replacement after kill {n + 1}"
        pid += 1
        h.step(ProcessStarted(pid))
    assert not h.core.over and h.core.fatal is None


def test_the_last_worker_leaving_is_seen_in_the_same_step() -> None:
    # Given two workers whose starts failed four times, the fifth failing now
    h = supplied(workers=1, quanta=1)
    pid = 101
    for _ in range(MAX_START_FAILURES - 1):
        h.step(ProcessExited(pid, "exited with code 1"), at=h.now + BACKOFF_MAX_S)
        h.step(at=h.now + BACKOFF_MAX_S)
        assert spawned(h) == 1
        pid += 1
        h.step(ProcessStarted(pid))
    h.step(ProcessExited(pid, "exited with code 1"), at=h.now + 1.0)
    # Then the run stops in that very step, naming why
    assert h.of(StopRun) and h.core.over
    assert h.core.fatal is not None and "exited with code 1" in h.core.fatal
    assert h.state("q0") is QState.CANCELLED
    assert h.core.error() is not None


def test_replacements_are_limited_by_rate_not_by_count() -> None:
    # Given 4 ready workers, all killed at once, twice in a row
    h = supplied(workers=4, quanta=8, retries=10)
    for i in range(4):
        up(h, bytes([65 + i]), 101 + i)
    h.step(*(ProcessExited(101 + i, KILLED) for i in range(4)), at=2.0)
    assert spawned(h) == 4
    h.step(*(ProcessStarted(105 + i) for i in range(4)))
    for i in range(4):
        up(h, bytes([75 + i]), 105 + i)
    h.step(*(ProcessExited(105 + i, KILLED) for i in range(4)), at=2.1)
    # Then no more than 4 start in a second, and all 4 within it
    n = spawned(h)
    assert n == 0
    h.step(at=h.core.next_deadline(h.now))
    assert h.now <= 2.35 and spawned(h) == 1
    h.step(at=3.1)
    assert spawned(h) == 3


def test_failed_starts_back_off_and_a_ready_worker_forgets_them() -> None:
    h = supplied(workers=3, quanta=2)
    up(h, A, 101)
    # When two processes die before their executor was ready
    h.step(
        ProcessExited(102, "exited with code 1"), ProcessExited(103, "exited with code 1"), at=2.0
    )
    # Then nothing starts until the backoff ends (doubling: the second failure in a row), and
    # then both places are filled
    assert spawned(h) == 0
    due = h.core.next_deadline(h.now)
    assert due is not None and due == pytest.approx(2.0 + BACKOFF_S * 2)
    h.step(at=due - 0.01)
    assert spawned(h) == 0
    h.step(at=due)
    assert spawned(h) == 2
    supply: WorkerSupply | None = h.core._supply
    assert supply is not None and supply.failures == 2
    # When one of them comes up, the failures are forgotten
    h.step(ProcessStarted(104), ProcessStarted(105))
    up(h, B, 104)
    assert supply.failures == 0


def test_a_spawn_that_fails_counts_as_a_failed_start() -> None:
    h = supplied(workers=1, quanta=1)
    h.step(ProcessExited(101, "exited with code 1"))
    for _ in range(MAX_START_FAILURES - 1):
        h.step(at=h.now + BACKOFF_MAX_S)
        assert spawned(h) == 1
        h.step(SpawnFailed("[Errno 11] Resource temporarily unavailable"))
    assert h.core.over and "Resource temporarily unavailable" in (h.core.fatal or "")


def test_an_agent_that_never_registers_is_killed_and_replaced() -> None:
    # Given two processes, one of which never says HELLO (stopped before it registered)
    h = supplied(workers=2, startup_timeout_s=5.0)
    up(h, A, 101)
    h.step(at=4.9)
    assert h.of(KillWorker) == []
    # Then it is killed at the start-up timeout
    assert h.core.next_deadline(h.now) == pytest.approx(5.0)
    h.step(WorkerHeard(A), at=5.0)
    assert h.of(KillWorker) == [KillWorker(None, 102)]
    # and once reaped, replaced (after the backoff of one failed start)
    h.step(ProcessExited(102, KILLED), at=5.1)
    h.step(at=5.1 + BACKOFF_S)
    assert spawned(h) == 1


def test_no_worker_to_be_had_stops_the_run_within_a_bounded_time() -> None:
    # Given a worker process that always hangs before registering
    h = supplied(workers=1, quanta=3, startup_timeout_s=5.0)
    pid = 101
    while not h.core.over:
        assert h.now < MAX_START_FAILURES * (5.0 + BACKOFF_MAX_S), "the run does not end"
        due = h.core.next_deadline(h.now)
        assert due is not None
        h.step(at=due)
        for kill in h.of(KillWorker):
            h.step(ProcessExited(kill.pid, KILLED))
        if spawned(h):
            pid += 1
            h.step(ProcessStarted(pid))
    # Then it stopped with every quantum cancelled and the reason
    assert pid == 100 + MAX_START_FAILURES
    assert "no workers" in (h.core.fatal or "")
    assert all(h.state(f"q{i}") is QState.CANCELLED for i in range(3))


def test_attached_only_brokers_never_give_up_for_want_of_workers() -> None:
    h = Harness(independent(1), workers=0, spawns=True)
    assert spawned(h) == 0
    h.step(at=1000.0)
    assert not h.core.over


# ---------------------------------------------------------------------- liveness
def test_a_stopped_agent_is_lost_while_its_child_keeps_returning_results() -> None:
    # Given a worker whose agent went silent at t=0 (SIGSTOP) while its child works on
    h = Harness(independent(40), workers=1, heartbeat_interval_s=1.0, liveness=3, retries=2)
    h.join(A, pid=7)
    while h.now < 3.0:
        (d,) = h.dispatches(A)
        h.step(ResultReceived(A, result(d)), at=h.now + 0.5)
        assert not h.of(KillWorker)
    # When the silence limit passes, results or not
    (d,) = h.dispatches(A)
    h.step(ResultReceived(A, result(d)), at=3.01)
    # Then the worker (agent and child) is killed and what it held goes back
    assert h.of(KillWorker) == [KillWorker(A, 7)]
    assert h.core.registry.get(A) is None


def test_a_worker_whose_child_died_is_judged_by_the_heartbeat_window() -> None:
    # Given a worker that was up, whose executor child then died, and whose agent then stops
    h = Harness(independent(2), workers=1, heartbeat_interval_s=1.0, liveness=3)
    h.join(A, pid=7)
    (d,) = h.dispatches(A)
    h.step(ExecutorGone(A, exited(0, d.seq, True)), WorkerHeard(A), at=1.0)
    # Then it is lost at the heartbeat window (4.0), not after a start-up grace (60 s)
    h.step(at=3.99)
    assert not h.of(KillWorker)
    assert h.core.next_deadline(h.now) == pytest.approx(4.0)
    h.step(at=4.01)
    assert h.of(KillWorker) == [KillWorker(A, 7)]
    assert h.state("q0") is QState.FAILED  # as its agent reported


def test_a_worker_that_gets_no_executor_up_is_lost_at_the_startup_timeout() -> None:
    # Given a heartbeating agent whose executor children keep dying at start
    h = Harness(independent(1), workers=1, startup_timeout_s=20.0, heartbeat_interval_s=1.0)
    h.step(WorkerJoined(A, 7, "host", 1, True), WorkerReady(A, 1))
    h.step(ExecutorGone(A, exited(1, 0, False)), WorkerHeard(A), at=1.0)
    while h.now < 19.5:
        h.step(WorkerHeard(A), at=h.now + 1.0)
        assert not h.of(KillWorker)
    # Then it is given up on start-up timeout after its executor went
    h.step(WorkerHeard(A), at=21.0)
    assert h.of(KillWorker) == [KillWorker(A, 7)]


def test_first_ready_starts_the_heartbeat_window() -> None:
    # Given an agent busy starting its executor for 30 s (no heartbeat), READY at 30
    h = Harness(independent(1), workers=1, heartbeat_interval_s=1.0, liveness=3)
    h.step(WorkerJoined(A, 7, "host", 1, True))
    h.step(WorkerReady(A), at=30.0)
    # Then it is not lost at once: its window counts from READY
    assert h.core.registry.get(A) is not None
    h.step(at=33.01)
    assert h.core.registry.get(A) is None


def test_failed_local_starts_do_not_stop_a_run_an_attached_worker_serves() -> None:
    # Given an attached worker up, and local processes that keep dying at start
    h = supplied(workers=1, quanta=50, retries=1)
    h.step(WorkerJoined(B, 999, "elsewhere", 1, False), WorkerReady(B, 1))
    pid = 101
    for _ in range(MAX_START_FAILURES + 2):
        h.step(ProcessExited(pid, "exited with code 1"), at=h.now + BACKOFF_MAX_S)
        h.step(WorkerHeard(B), at=h.now + BACKOFF_MAX_S)
        assert spawned(h) == 1  # (still tried, one at a time, backing off)
        pid += 1
        h.step(ProcessStarted(pid))
    # Then the run goes on with the worker it has
    assert not h.core.over and h.core.fatal is None


@pytest.mark.parametrize("how", ["left", "silent", "stuck", "overdue", "process ended"])
def test_every_way_a_worker_is_lost_ends_in_one_forget(how: str) -> None:
    # Given a local worker running a quantum with a 1 s timeout
    h = supplied(workers=1, quanta=2, timeout_s=1.0, heartbeat_interval_s=1.0, liveness=3)
    up(h, A, 101)
    # When it is lost in one of the ways there are
    match how:
        case "left":
            h.step(WorkerLeft(A, "goodbye"), at=0.5)
        case "silent":
            h.step(at=3.5)
        case "stuck":
            h.step(ExecutorGone(A, exited(1, 0, False)), WorkerHeard(A), at=0.5)
            for t in (1.5, 2.5, 3.5, 4.5, 5.5):
                h.step(WorkerHeard(A), at=t)
        case "overdue":
            h.step(WorkerHeard(A), at=1.0 + BACKSTOP_GRACE_S - 0.1)
            assert not h.of(ForgetWorker)
            h.step(WorkerHeard(A), at=1.0 + BACKSTOP_GRACE_S)
        case "process ended":
            h.step(ProcessExited(101, KILLED), at=0.5)
    # Then the driver is told to forget it, once, and it is gone from the core
    forgets = [a for a in h.actions if isinstance(a, ForgetWorker)]
    assert forgets == [ForgetWorker(A)]
    assert h.core.worker(A) is None


def test_an_attached_worker_between_executors_keeps_a_run_from_giving_up() -> None:
    # Given local starts that keep failing and an attached worker whose executor is being
    # replaced (registered, not READY) when the last failure comes
    h = supplied(workers=1, quanta=5, startup_timeout_s=200.0)
    h.step(WorkerJoined(B, 999, "elsewhere", 1, False), WorkerReady(B, 1))
    h.step(ExecutorGone(B, exited(1, 0, False)), WorkerHeard(B))
    pid = 101
    for _ in range(MAX_START_FAILURES):
        h.step(ProcessExited(pid, "exited with code 1"), WorkerHeard(B), at=h.now + 1.0)
        h.step(WorkerHeard(B), at=h.now + BACKOFF_MAX_S)
        pid += 1
        if spawned(h):
            h.step(ProcessStarted(pid))
    # Then the run goes on: the attached worker may come back
    assert not h.core.over and h.core.fatal is None


def test_a_burst_of_failed_spawns_is_one_failed_start() -> None:
    # Given 4 starts asked for, the second failing (the process limit, say)
    h = Harness(independent(4), workers=4, spawns=True)
    assert spawned(h) == 4
    h.step(ProcessStarted(101), SpawnFailed("[Errno 11] Resource temporarily unavailable", 3))
    # Then it is one failed start: the 3 places are filled again after one backoff
    supply: WorkerSupply | None = h.core._supply
    assert supply is not None and supply.failures == 1
    h.step(at=2.0)
    assert spawned(h) == 3


def test_a_ready_from_an_older_executor_than_the_current_one_is_ignored() -> None:
    h = Harness(independent(1), workers=1)
    h.step(WorkerJoined(A, 7, "host", 1, True), WorkerReady(A, 3))
    h.step(WorkerReady(A, 2))  # (its READY travelled on another link, and came late)
    h.step(ExecutorGone(A, exited(2, 0, False)))
    info = h.core.registry.get(A)
    assert info is not None and info.ready and info.generation == 3
