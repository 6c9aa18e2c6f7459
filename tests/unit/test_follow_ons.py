"""Follow-ons: a chain's next link sent behind its parent to the same executor child."""

from __future__ import annotations

from broker.core import (
    BACKSTOP_GRACE_S,
    STEAL_AFTER_S,
)
from broker.core.events import (
    ExecutorGone,
    KillWorker,
    QuantumRevoked,
    ResultReceived,
    RevokeQuantum,
    StopRequested,
    StopRun,
    WorkerHeard,
    WorkerJoined,
    WorkerLeft,
    WorkerReady,
)
from broker.core.state import QState
from common.graph import QuantumGraph
from common.protocol import ResultStatus
from common.report import Reason
from tests.graphs import chain, quantum
from tests.unit.harness import Harness, exited, result

A, B, C = b"wa", b"wb", b"wc"


def test_a_chain_is_sent_one_link_ahead_to_the_worker_running_its_parent() -> None:
    # Given a chain on one worker that holds one quantum, with follow-ons
    h = Harness(chain(4), workers=1, follow_ons=True)
    h.join(A)
    # Then c1 goes behind c0 at once, to run only if c0 succeeds there
    c0, c1 = h.dispatches(A)
    assert (c0.quantum_id, c0.after) == ("c0", 0)
    assert (c1.quantum_id, c1.after) == ("c1", c0.seq)
    assert h.state("c1") is QState.RUNNING
    # When c0 succeeds, c1 is simply running; c2 follows it
    h.step(ResultReceived(A, result(c0)), at=1.0)
    (c2,) = h.dispatches(A)
    assert (c2.quantum_id, c2.after) == ("c2", c1.seq)
    h.step(ResultReceived(A, result(c1)), at=2.0)
    (c3,) = h.dispatches(A)
    h.step(ResultReceived(A, result(c2)), at=3.0)
    assert h.dispatches() == []
    h.step(ResultReceived(A, result(c3)), at=4.0)
    assert h.of(StopRun) and h.core.error() is None
    assert [h.attempts(f"c{i}") for i in range(4)] == [1, 1, 1, 1]


def test_without_follow_ons_a_child_waits_for_its_parents_result() -> None:
    h = Harness(chain(2), workers=1)
    h.join(A)
    assert [d.quantum_id for d in h.dispatches(A)] == ["c0"]


def test_a_follow_on_of_a_failed_quantum_never_counts_as_an_attempt() -> None:
    # Given c0 failing on A with c1 sent behind it (keep going)
    h = Harness(chain(3), workers=1, follow_ons=True)
    h.join(A)
    c0, _ = h.dispatches(A)
    h.step(ResultReceived(A, result(c0, ResultStatus.FAILURE)), at=1.0)
    # Then c1 (dropped by the child) is skipped, blocked by c0, with no attempt spent
    assert h.state("c1") is QState.SKIPPED and h.attempts("c1") == 0
    assert h.core.state.blocked_by[h.core.graph.index("c1")] == {h.core.graph.index("c0")}
    (stop,) = h.of(StopRun)
    assert stop.cancelled == 0
    assert h.core.registry.get(A).in_flight == {}  # type: ignore[union-attr]


def test_a_follow_on_of_a_retried_quantum_waits_for_the_retry() -> None:
    # Given c0 on A, c1 behind it; A is lost
    h = Harness(chain(2), workers=1, follow_ons=True, retries=1)
    h.join(A)
    c0, c1 = h.dispatches(A)
    assert c1.after == c0.seq
    h.step(WorkerLeft(A, "worker wa died"), at=1.0)
    # Then c0 is retried (attempt 2 later) and c1 waits for it again, its attempt given back
    assert h.state("c0") is QState.READY and h.attempts("c0") == 1
    assert h.state("c1") is QState.PENDING and h.attempts("c1") == 0
    # When B joins, it takes c0 and c1 behind it
    h.join(B)
    again, c1 = h.dispatches(B)
    assert (again.quantum_id, again.attempt) == ("c0", 2)
    assert (c1.quantum_id, c1.attempt, c1.after) == ("c1", 1, again.seq)


def test_a_dead_child_gives_back_the_follow_on_of_the_quantum_it_died_running() -> None:
    h = Harness(chain(2), workers=1, follow_ons=True)
    h.step(WorkerJoined(A, 11, "host", 1, True), WorkerReady(A, 1))
    c0, c1 = h.dispatches(A)
    assert c1.after == c0.seq
    # When the child dies running c0 (it never took c1)
    h.step(ExecutorGone(A, exited(1, c0.seq, True)), at=1.0)
    # Then c0 failed, and c1 is skipped without an attempt (not run, not "running")
    assert h.state("c0") is QState.FAILED
    assert h.state("c1") is QState.SKIPPED and h.attempts("c1") == 0


def test_a_follow_on_of_an_orphaned_result_waits_for_that_result() -> None:
    h = Harness(chain(2), workers=1, follow_ons=True)
    h.step(WorkerJoined(A, 11, "host", 1, True), WorkerReady(A, 1))
    c0, c1 = h.dispatches(A)
    assert c1.after == c0.seq
    # When the child dies after finishing c0, before taking c1; c0's result is in transit
    h.step(ExecutorGone(A, exited(1, c0.seq, False, code=0)), at=1.0)
    assert h.state("c1") is QState.PENDING and h.attempts("c1") == 0
    # Then once c0's result arrives and the next child is READY, c1 goes there
    h.step(ResultReceived(A, result(c0)), WorkerReady(A, 2), at=1.5)
    (again,) = h.dispatches(A)
    assert (again.quantum_id, again.attempt, again.after) == ("c1", 1, 0)


def test_a_follow_on_is_sent_only_if_it_would_be_the_most_critical_quantum_ready() -> None:
    # Given p -> c beside y0 -> y1 -> y2, on one worker holding one quantum
    quanta = [quantum("p"), quantum("c", inputs=["p"])]
    quanta += [quantum(f"y{i}", inputs=[f"y{i - 1}"] if i else []) for i in range(3)]
    h = Harness(QuantumGraph.from_quanta(quanta), workers=1, follow_ons=True)
    h.join(A)
    # Then A runs y0 (the longest path) with y1 behind it: once y0 ends, y1 outranks p
    y0, y1 = h.dispatches(A)
    assert (y0.quantum_id, y1.quantum_id, y1.after) == ("y0", "y1", y0.seq)
    # When y0 ends, y2 (one quantum on its path) does not go behind y1: p (two) is ready
    h.step(ResultReceived(A, result(y0)), at=1.0)
    assert h.dispatches() == [] and h.state("y2") is QState.PENDING


def test_a_follow_on_is_never_stolen_and_is_given_back_on_a_drain() -> None:
    # Given c0 running on A with c1 behind it, and B idle with nothing ready
    h = Harness(chain(2), workers=1, follow_ons=True)
    h.join(A)
    _, c1 = h.dispatches(A)
    h.join(B)
    h.step(at=STEAL_AFTER_S * 10)
    assert h.of(RevokeQuantum) == []  # c1 could not run on B before c0 ends anyway
    # When the run drains, A's child gives c1 back: it waits again, then is cancelled
    h.step(StopRequested("stop", graceful=True), at=1.0)
    h.step(QuantumRevoked(A, c1.quantum_id, c1.attempt), at=1.1)
    assert h.state("c1") is QState.PENDING and h.attempts("c1") == 0


def test_a_follow_on_of_a_quantum_lost_for_good_or_past_its_backstop_is_skipped() -> None:
    # Lost with its worker, no retries left: c0 fails, c1 behind it is skipped, unattempted
    h = Harness(chain(3), workers=1, follow_ons=True, retries=0)
    h.join(A)
    assert len(h.dispatches(A)) == 2
    h.step(WorkerLeft(A, "worker wa died"), at=1.0)
    assert h.state("c0") is QState.FAILED and h.reason("c0") is Reason.WORKER_LOST
    assert h.state("c1") is QState.SKIPPED and h.attempts("c1") == 0
    # Past the backstop of a worker that does not enforce timeouts: the same, and it is killed
    h = Harness(chain(3), workers=1, follow_ons=True, timeout_s=2.0)
    h.join(A, pid=41)
    c0, c1 = h.dispatches(A)
    assert c1.after == c0.seq
    h.step(WorkerHeard(A), at=2.0 + BACKSTOP_GRACE_S)
    assert h.state("c0") is QState.TIMED_OUT and h.of(KillWorker) == [KillWorker(A, 41)]
    assert h.state("c1") is QState.SKIPPED and h.attempts("c1") == 0
