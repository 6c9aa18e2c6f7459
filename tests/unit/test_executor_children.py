"""A worker's executor child dying, unreachable or replaced, as the core settles what was
sent to it."""

from __future__ import annotations

import pytest

from broker.core import (
    ORPHAN_GRACE_S,
)
from broker.core.events import (
    ExecutorGone,
    ExecutorUnreachable,
    KillWorker,
    QuantumRevoked,
    ResultReceived,
    WorkerHeard,
    WorkerJoined,
    WorkerReady,
)
from broker.core.state import QState
from common.report import Reason
from tests.graphs import independent
from tests.unit.harness import Harness, exited, result

A, B, C = b"wa", b"wb", b"wc"


def test_a_dead_executor_child_settles_what_was_sent_to_it_by_how_far_it_got() -> None:
    # Given worker A (child generation 1) holding four quanta, dispatched in order 1..4
    h = Harness(independent(4), workers=1)
    h.step(WorkerJoined(A, 11, "host", 4, True), WorkerReady(A, 1))
    sent = h.dispatches(A)
    assert [d.seq for d in sent] == [1, 2, 3, 4]
    q2, q3, q4 = (d.quantum_id for d in sent[1:])
    h.step(ResultReceived(A, result(sent[0])), at=1.0)  # q1's result arrived
    # When its child dies running q3 (it took dispatches up to 3; q2's result is in transit)
    h.step(ExecutorGone(A, exited(1, 3, True)), at=2.0)
    # Then q3 failed with the child's death, q4 (never taken) is ready again with its attempt
    # given back, q2 is still awaited, and A takes nothing until its next child is READY
    assert h.state(q3) is QState.FAILED and h.reason(q3) is Reason.SIGNAL
    assert h.state(q4) is QState.READY and h.attempts(q4) == 0
    assert h.state(q2) is QState.RUNNING
    assert h.dispatches() == []
    # When q2's result arrives late, it is applied; the next child takes q4
    h.step(ResultReceived(A, result(sent[1])), at=2.5)
    assert h.state(q2) is QState.SUCCEEDED
    h.step(WorkerReady(A, 2), at=3.0)
    (again,) = h.dispatches(A)
    assert (again.quantum_id, again.attempt, again.seq) == (q4, 1, 5)


def test_a_result_lost_with_its_executor_child_is_retried_after_a_grace() -> None:
    # Given q0 finished by a child that died before its RESULT reached the broker
    h = Harness(independent(1), workers=1, retries=1)
    h.step(WorkerJoined(A, 11, "host", 1, True), WorkerReady(A, 1))
    (d,) = h.dispatches(A)
    h.step(ExecutorGone(A, exited(1, d.seq, False, code=0)), at=1.0)
    h.step(WorkerReady(A, 2), at=1.1)
    assert h.state("q0") is QState.RUNNING and h.dispatches() == []  # awaited, not re-sent
    assert h.core.next_deadline(1.1) == pytest.approx(1.0 + ORPHAN_GRACE_S)
    # When no result comes within the grace, the attempt counts as lost: attempt 2, same worker
    h.step(at=1.0 + ORPHAN_GRACE_S)
    (retry,) = h.dispatches(A)
    assert (retry.quantum_id, retry.attempt) == ("q0", 2)
    assert h.of(KillWorker) == []  # the worker itself is fine
    # And the first attempt's result, should it come after all, is fenced off
    h.step(ResultReceived(A, result(d)), at=4.0)
    assert h.state("q0") is QState.RUNNING


def test_an_unreachable_executor_child_pauses_its_worker_until_the_next_one() -> None:
    h = Harness(independent(3), workers=1)
    h.step(WorkerJoined(A, 11, "host", 1, True), WorkerReady(A, 1))
    (d,) = h.dispatches(A)
    # When the send to its child fails, the quantum is given back and A is not sent more
    h.step(QuantumRevoked(A, d.quantum_id, d.attempt), ExecutorUnreachable(A, 1), at=1.0)
    assert h.dispatches() == [] and h.state(d.quantum_id) is QState.READY
    # A report about an older generation does not pause the current one
    h.step(WorkerReady(A, 2), at=2.0)
    (d2,) = h.dispatches(A)
    h.step(ExecutorUnreachable(A, 1), ResultReceived(A, result(d2)), at=3.0)
    assert len(h.dispatches(A)) == 1


def test_a_dead_child_without_its_agents_report_is_retried_after_the_silence_limit() -> None:
    # Given q0 sent to A's child, whose link then closed; the agent's report never comes
    h = Harness(independent(1), workers=1, retries=1, heartbeat_interval_s=1.0, liveness=3)
    h.step(WorkerJoined(A, 11, "host", 1, True), WorkerReady(A, 1))
    assert len(h.dispatches(A)) == 1
    h.step(ExecutorUnreachable(A, 1), at=1.0)
    assert h.state("q0") is QState.RUNNING and h.dispatches() == []
    # When the worker's next child is up and the silence limit passes, q0 is retried there
    h.step(WorkerReady(A, 2), WorkerHeard(A), at=3.9)
    assert h.dispatches() == []
    h.step(WorkerHeard(A), at=4.0)
    (retry,) = h.dispatches(A)
    assert (retry.quantum_id, retry.attempt) == ("q0", 2)
    # And had the report come, it would have settled q0 at once (a fresh run shows it)
    h2 = Harness(independent(1), workers=1, retries=1, heartbeat_interval_s=1.0, liveness=3)
    h2.step(WorkerJoined(A, 11, "host", 1, True), WorkerReady(A, 1))
    assert len(h2.dispatches(A)) == 1
    h2.step(ExecutorUnreachable(A, 1), ExecutorGone(A, exited(1, 0, False)), at=1.0)
    assert h2.state("q0") is QState.READY and h2.attempts("q0") == 0  # never taken: no attempt


def test_a_ready_from_an_executor_child_already_reported_dead_is_ignored() -> None:
    h = Harness(independent(2), workers=1)
    h.step(WorkerJoined(A, 11, "host", 1, True), WorkerReady(A, 1))
    (d,) = h.dispatches(A)
    # The agent's report of child 2's death overtakes child 2's own READY
    h.step(ExecutorGone(A, exited(1, d.seq, True)), ExecutorGone(A, exited(2, 0, False)))
    h.step(WorkerReady(A, 2), at=1.0)
    assert h.dispatches() == []  # nothing goes to a dead child
    h.step(WorkerReady(A, 3), at=2.0)
    assert len(h.dispatches(A)) == 1
