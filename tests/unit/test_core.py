"""The broker core driven with events and explicit ``now`` values: joining, dispatch, loss,
failure, stopping, the journal and the status. No sockets, no processes."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from broker.core import (
    BACKSTOP_GRACE_S,
    STARTUP_HOLD_S,
    STEAL_AFTER_S,
)
from broker.core.events import (
    AdmitWorker,
    KillWorker,
    QuantumRevoked,
    RefuseWorker,
    ResultReceived,
    RevokeQuantum,
    ShutdownWorker,
    StopRequested,
    StopRun,
    WorkerCapacity,
    WorkerHeard,
    WorkerJoined,
    WorkerLeft,
    WorkerReady,
)
from broker.core.state import QState
from broker.journal import Journal, JournalState
from common.graph import QuantumGraph
from common.protocol import ResultStatus
from common.report import ExecutionStatus, Reason
from tests.graphs import chain, independent, quantum
from tests.unit.harness import Harness, result

A, B, C = b"wa", b"wb", b"wc"


def test_joining_worker_is_admitted_and_gets_ready_work() -> None:
    h = Harness(independent(2), workers=1)
    h.step(WorkerJoined(A, 11, "host", 2, True))
    assert h.of(AdmitWorker) == [AdmitWorker(A, "w1")]
    assert h.dispatches() == []  # not READY yet
    h.step(WorkerReady(A))
    assert {d.quantum_id for d in h.dispatches(A)} == {"q0", "q1"}  # slots 2: one queued


def test_a_chain_runs_in_order_and_the_run_stops_when_all_succeeded() -> None:
    h = Harness(chain(3), workers=1)
    h.join(A)
    for expected in ("c0", "c1", "c2"):
        (d,) = h.dispatches()
        assert d.quantum_id == expected
        h.step(ResultReceived(A, result(d)), at=h.now + 1)
    (stop,) = h.of(StopRun)
    assert stop.reason is None and stop.cancelled == 0
    assert h.of(ShutdownWorker) == [ShutdownWorker(A, "run complete", 0.0, final=True)]
    assert h.core.over and h.core.step([WorkerHeard(A)], 99.0) == []


def test_lost_worker_retries_under_a_new_attempt_and_fences_the_late_result() -> None:
    # Given quantum q0 dispatched to A (attempt 1)
    h = Harness(independent(1), workers=1, retries=1)
    h.join(A)
    (first,) = h.dispatches(A)
    assert first.attempt == 1
    # When A's process dies, the quantum goes to B as attempt 2
    h.step(WorkerLeft(A, "worker w1 killed by signal 9"))
    assert h.of(KillWorker) == [KillWorker(A, 1 + 1)]
    assert h.state("q0") is QState.READY
    h.join(B)
    (second,) = h.dispatches(B)
    assert (second.quantum_id, second.attempt) == ("q0", 2)
    # Then a late result of attempt 1, from A or from B, is not applied
    assert h.step(ResultReceived(A, result(first))) == [
        RefuseWorker(A, "not a registered worker of this run")
    ]
    h.step(ResultReceived(B, result(first, ResultStatus.FAILURE)))
    assert h.state("q0") is QState.RUNNING
    # And the current attempt's result is
    h.step(ResultReceived(B, result(second)))
    assert h.state("q0") is QState.SUCCEEDED
    assert h.attempts("q0") == 2


def test_lost_worker_beyond_the_retries_fails_the_quantum_and_skips_descendants() -> None:
    h = Harness(chain(3), workers=1, retries=0)
    h.join(A)
    h.step(WorkerLeft(A, "gone"))
    assert h.state("c0") is QState.FAILED
    assert h.reason("c0") is Reason.WORKER_LOST
    assert h.ids(h.core.state.blocked_by[h.core.graph.index("c2")]) == {"c0"}
    assert h.of(StopRun) and h.core.over


def test_backstop_kills_a_worker_that_does_not_enforce_the_timeout() -> None:
    # Given a quantum with a 2 s timeout, and another prefetched behind it on the same worker
    h = Harness(independent(3), workers=1, timeout_s=2.0)
    h.join(A, slots=2, pid=41)
    running, queued = h.dispatches(A)
    # When nothing comes back before timeout + grace
    deadline = h.core.next_deadline(h.now)
    assert deadline is not None and deadline <= 2.0 + BACKSTOP_GRACE_S
    h.step(WorkerHeard(A), at=2.0 + BACKSTOP_GRACE_S - 0.01)
    assert h.state(running.quantum_id) is QState.RUNNING
    h.step(WorkerHeard(A), at=2.0 + BACKSTOP_GRACE_S)
    # Then the running one timed out, the worker is killed, the queued one goes back to ready
    assert h.state(running.quantum_id) is QState.TIMED_OUT
    assert h.reason(running.quantum_id) is Reason.TIMEOUT
    assert h.of(KillWorker) == [KillWorker(A, 41)]
    assert h.state(queued.quantum_id) is QState.READY


def test_silent_worker_is_lost_after_the_liveness_limit_and_its_quantum_rerun() -> None:
    h = Harness(independent(1), workers=2, heartbeat_interval_s=1.0, liveness=3)
    h.join(A)
    h.join(B)
    (d,) = h.dispatches()
    idle = B if d.worker == A else A
    h.step(WorkerHeard(idle), at=2.9)
    h.step(WorkerHeard(idle), at=3.0)
    assert h.state("q0") is QState.RUNNING  # exactly at the limit: not yet
    h.step(WorkerHeard(idle), at=3.01)
    (kill,) = h.of(KillWorker)
    assert kill.worker == d.worker
    (again,) = h.dispatches(idle)
    assert (again.quantum_id, again.attempt) == ("q0", 2)


def test_a_worker_still_starting_is_not_declared_silent() -> None:
    h = Harness(independent(1), workers=1, heartbeat_interval_s=1.0, liveness=2)
    h.step(WorkerJoined(A, 5, "host", 1, True))
    h.step(at=30.0)  # not READY, within startup_timeout_s (60 s)
    assert h.core.registry.get(A) is not None
    # (nothing is due before its startup ends: the driver need not wake until then)
    assert h.core.next_deadline(30.0) == pytest.approx(60.0)
    h.step(at=61.0)
    assert h.core.registry.get(A) is None and h.of(KillWorker)


def test_a_worker_that_went_silent_after_starting_is_lost_at_the_silence_limit() -> None:
    h = Harness(independent(1), workers=1, heartbeat_interval_s=1.0, liveness=2)
    h.step(WorkerJoined(A, 5, "host", 1, True))
    h.step(at=3.0)  # still starting (past the silence limit, within its startup time)
    due = h.core.next_deadline(3.0)
    assert due is not None and due > 3.0  # (not past: the driver would poll without pause)
    h.step(WorkerReady(A), at=5.0)  # up after 5 s; then nothing more from it
    assert h.core.next_deadline(5.0) == pytest.approx(7.0)
    h.step(at=7.1)
    assert h.core.registry.get(A) is None and h.of(KillWorker)


def test_dispatch_waits_for_the_expected_workers_but_not_forever() -> None:
    h = Harness(independent(4), workers=2)
    h.join(A, slots=2)
    assert h.dispatches() == []
    assert h.core.next_deadline(h.now) == STARTUP_HOLD_S
    h.step(at=STARTUP_HOLD_S)
    assert len(h.dispatches(A)) == 2


def test_idle_worker_steals_a_quantum_prefetched_behind_a_long_one() -> None:
    # Given A runs q0 with q1 prefetched behind it, and B joins with nothing else to do
    h = Harness(independent(2), workers=1)
    h.join(A, slots=2)
    assert len(h.dispatches(A)) == 2
    h.step(WorkerJoined(B, 9, "host", 2, True), WorkerReady(B))
    assert h.of(RevokeQuantum) == []
    # When q0 has run STEAL_AFTER_S, the queued one is revoked (once)
    assert h.core.next_deadline(h.now) == pytest.approx(STEAL_AFTER_S)
    h.step(at=STEAL_AFTER_S)
    (revoke,) = h.of(RevokeQuantum)
    assert revoke.worker == A
    h.step(at=STEAL_AFTER_S * 2)
    assert h.of(RevokeQuantum) == []
    # Then A gives it back and B runs it; the taken-back attempt does not count
    h.step(QuantumRevoked(A, revoke.quantum_id, revoke.attempt))
    (d,) = h.dispatches(B)
    assert d.quantum_id == revoke.quantum_id and d.attempt == revoke.attempt
    assert h.attempts(d.quantum_id) == 1


def test_a_prefetched_quantum_with_its_follow_on_behind_it_is_still_taken_back() -> None:
    # Given A runs a with b prefetched behind it and b1 sent as b's follow-on (a chain's next
    # link goes behind it), and B joins with nothing else to do
    g = QuantumGraph.from_quanta(
        [quantum("a"), quantum("a1", inputs=["a"]), quantum("b"), quantum("b1", inputs=["b"])]
    )
    h = Harness(g, workers=1, follow_ons=True)
    h.join(A, slots=2)
    sent = [(d.quantum_id, d.after) for d in h.dispatches(A)]
    b = next(d for d in h.dispatches(A) if d.quantum_id == "b")
    assert sent == [("a", 0), ("b", 0), ("b1", b.seq)]
    h.step(WorkerJoined(B, 9, "host", 2, True), WorkerReady(B))
    # When a has run STEAL_AFTER_S, b is taken back (b1 cannot run before it, but b can)
    h.step(at=STEAL_AFTER_S)
    (revoke,) = h.of(RevokeQuantum)
    assert (revoke.worker, revoke.quantum_id) == (A, "b")
    # Then A gives it back (its follow-on with it): B runs b, with b1 behind it there
    h.step(QuantumRevoked(A, "b", revoke.attempt))
    on_b = h.dispatches(B)
    assert [(d.quantum_id, d.after) for d in on_b] == [("b", 0), ("b1", on_b[0].seq)]
    assert h.attempts("b") == 1 and h.attempts("b1") == 1


def test_fail_fast_cancels_running_and_queued_quanta_and_shuts_workers_down() -> None:
    h = Harness(independent(6), workers=2, fail_fast=True)
    h.join(A, slots=2)
    h.join(B, slots=2)
    first = h.dispatches(A)[0] if h.dispatches(A) else None
    running = h.core.state.in_state(QState.RUNNING)
    assert len(running) == 4 and first is not None
    h.step(ResultReceived(A, result(first, ResultStatus.FAILURE)))
    (stop,) = h.of(StopRun)
    assert stop.reason is not None and stop.reason.startswith("fail-fast")
    assert stop.cancelled == 5
    assert h.ids(h.core.state.in_state(QState.CANCELLED)) == {f"q{i}" for i in range(6)} - {
        first.quantum_id
    }
    assert {a.worker for a in h.of(ShutdownWorker) if a.final and a.grace_s == 0} == {A, B}
    report = h.core.report(h.core.error())
    assert report.counts()[ExecutionStatus.SKIPPED] == 5
    assert report.details("q5").reason is Reason.CANCELLED


def test_keep_going_skips_only_descendants_and_names_the_blocker() -> None:
    graph = QuantumGraph.from_quanta(
        [
            quantum("a"),
            quantum("b", inputs=["a"]),
            quantum("c", inputs=["b"]),
            quantum("x"),
        ]
    )
    h = Harness(graph, workers=1)
    h.join(A, slots=2)
    by_id = {d.quantum_id: d for d in h.dispatches()}
    h.step(ResultReceived(A, result(by_id["a"], ResultStatus.FAILURE, exc_class="ValueError")))
    assert h.state("b") is QState.SKIPPED and h.state("c") is QState.SKIPPED
    assert not h.of(StopRun)
    h.step(ResultReceived(A, result(by_id["x"])))
    assert h.of(StopRun)
    report = h.core.report(h.core.error())
    assert report.details("c").blockedBy == ("a",)
    assert report.report_for("x").status is ExecutionStatus.SUCCESS
    assert report.report_for("a").exceptionInfo is not None


def test_stop_run_from_a_result_stops_the_run() -> None:
    h = Harness(independent(3), workers=1)
    h.join(A)
    (d,) = h.dispatches()
    h.step(ResultReceived(A, result(d, ResultStatus.FAILURE, stop_run=True)))
    assert h.of(StopRun) and h.of(StopRun)[0].cancelled == 2


def test_resume_skips_done_quanta(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3", resume=False)
    h = Harness(chain(3), workers=1, done=frozenset({"c0", "c1"}), journal=journal)
    h.join(A)
    (d,) = h.dispatches()
    assert d.quantum_id == "c2"
    h.step(ResultReceived(A, result(d)))
    assert h.of(StopRun)
    report = h.core.report(None)
    assert report.details("c0").attempts == 0
    assert journal.last_states() == {"c2": JournalState.SUCCESS}
    journal.close()


def test_graceful_stop_lets_running_quanta_finish_then_cancels_the_rest() -> None:
    # Given two running quanta and more waiting
    h = Harness(independent(5), workers=2, shutdown_grace_s=3.0)
    h.join(A)
    h.join(B)
    a, b = h.dispatches(A)[0], h.dispatches(B)[0]
    # When a graceful stop is requested, every worker is told with the grace, nothing new starts
    h.step(StopRequested("SIGINT received", graceful=True), at=1.0)
    assert {(s.worker, s.grace_s, s.final) for s in h.of(ShutdownWorker)} == {
        (A, 3.0, False),
        (B, 3.0, False),
    }
    h.step(ResultReceived(A, result(a)), at=2.0)
    assert h.dispatches() == [] and not h.of(StopRun)
    # Then the run ends at the grace deadline with what still ran cancelled
    assert h.core.next_deadline(h.now) == 4.0
    h.step(WorkerHeard(B), at=4.0)
    (stop,) = h.of(StopRun)
    cancelled = h.ids(h.core.state.in_state(QState.CANCELLED))
    assert b.quantum_id in cancelled and a.quantum_id not in cancelled
    assert stop.cancelled == 4
    assert h.state(a.quantum_id) is QState.SUCCEEDED


def test_graceful_stop_ends_as_soon_as_nothing_runs() -> None:
    h = Harness(independent(3), workers=1, shutdown_grace_s=30.0)
    h.join(A)
    (d,) = h.dispatches()
    h.step(StopRequested("drain", graceful=True))
    h.step(ResultReceived(A, result(d)), at=0.5)
    cancelled = h.ids(h.core.state.in_state(QState.CANCELLED))
    assert h.of(StopRun)[0].cancelled == 2 and cancelled == {"q0", "q1", "q2"} - {d.quantum_id}


def test_cancellations_and_skips_are_journaled(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3", resume=False)
    h = Harness(chain(3), workers=1, journal=journal)
    h.join(A)
    (d,) = h.dispatches()
    h.step(ResultReceived(A, result(d, ResultStatus.FAILURE)))
    states = journal.last_states()
    assert states == {
        "c0": JournalState.FAILURE,
        "c1": JournalState.SKIPPED,
        "c2": JournalState.SKIPPED,
    }
    journal.close()
    journal = Journal(tmp_path / "k.sqlite3", resume=False)
    h = Harness(independent(2), workers=1, journal=journal)
    h.join(A)
    h.step(StopRequested("abort"))
    assert set(journal.last_states().values()) == {JournalState.CANCELLED}
    journal.close()


def test_results_that_do_not_match_anything_in_flight_change_nothing() -> None:
    h = Harness(independent(2), workers=1)
    h.join(A)
    (d,) = h.dispatches()
    other = "q1" if d.quantum_id == "q0" else "q0"
    for stray in (
        replace(result(d), quantum_id="no-such-quantum"),
        replace(result(d), attempt=d.attempt + 1),
        replace(result(d), quantum_id=other),  # ready, never dispatched to A
    ):
        assert h.step(ResultReceived(A, stray)) == []
    assert h.state(d.quantum_id) is QState.RUNNING and h.state(other) is QState.READY


def test_events_from_unknown_workers_are_refused_and_change_nothing() -> None:
    h = Harness(independent(1), workers=1)
    for event in (WorkerReady(C), WorkerHeard(C), QuantumRevoked(C, "q0", 1)):
        assert h.step(event) == [RefuseWorker(C, "not a registered worker of this run")]
    assert h.step(WorkerLeft(C, "gone")) == []
    assert h.state("q0") is QState.READY


def test_duplicate_join_keeps_the_first_registration() -> None:
    h = Harness(independent(1), workers=1)
    h.join(A)
    h.step(WorkerJoined(A, 99, "other", 4, False))
    info = h.core.registry.get(A)
    assert info is not None and info.pid == len(A) and info.worker_id == "w1"


def test_durations_are_learned_from_successes() -> None:
    h = Harness(independent(2), workers=1)
    h.join(A)
    (d,) = h.dispatches()
    h.step(ResultReceived(A, result(d, duration_s=0.25)))
    assert h.core.scheduler.estimate(h.core.graph.labels.index("ok")) == 0.25


def test_eta_counts_the_time_between_quanta_as_the_run_has_so_far() -> None:
    # Given 4 independent quanta on one worker, the first taking 1 s of a 2 s wall (overhead)
    h = Harness(independent(4), workers=1)
    h.join(A)
    (d,) = h.dispatches()
    h.step(ResultReceived(A, result(d, duration_s=1.0)), at=2.0)
    # Then the 3 left are expected to take 2 s each, not 1 s
    assert h.core.status(h.now).eta_s == pytest.approx(3 * 2.0)


def test_empty_graph_is_over_at_start() -> None:
    h = Harness(QuantumGraph.from_quanta([]), workers=1)
    assert h.core.over and h.of(StopRun) == [StopRun(None, 0)]


def test_status_counts_per_label_and_estimates_unseen_labels_from_the_first_result() -> None:
    # Given a chain of two labels: isr -> calibrate, 3 detectors
    graph = QuantumGraph.from_quanta(
        [quantum(f"isr{d}", label="isr") for d in range(3)]
        + [quantum(f"cal{d}", label="cal", inputs=[f"isr{d}"]) for d in range(3)]
    )
    h = Harness(graph, workers=1)
    h.join(A)
    assert h.core.status(h.now).eta_s is None  # nothing learned yet
    # When the first isr finished in 2 s
    (d,) = h.dispatches()
    h.step(ResultReceived(A, result(d, duration_s=2.0)), at=2.0)
    status = h.core.status(h.now)
    # Then counts are per label (its calibrate runs next: depth-first), and the ETA prices
    # calibrate (not seen yet) like isr
    assert status.by_label["isr"] == {"succeeded": 1, "ready": 2}
    assert status.by_label["cal"] == {"running": 1, "pending": 2}
    assert status.eta_s == pytest.approx(5 * 2.0)
    # And a failure is listed
    (d,) = h.dispatches()
    h.step(ResultReceived(A, result(d, ResultStatus.FAILURE)), at=3.0)
    (failure,) = h.core.status(h.now).failures
    assert failure.id == d.quantum_id and failure.reason == "exception"


def test_a_worker_can_change_how_many_quanta_it_accepts() -> None:
    # Given a worker of 1 slot running 1 quantum of 4
    h = Harness(independent(4), workers=1)
    h.join(A)
    (first,) = h.dispatches(A)
    # When its driver says it should hold 3, it gets 2 more at once
    h.step(WorkerCapacity(A, 3))
    assert len(h.dispatches(A)) == 2
    # And back to 1: a finished quantum frees no slot while 2 are still in flight
    h.step(WorkerCapacity(A, 1))
    h.step(ResultReceived(A, result(first)))
    assert h.dispatches() == []


def test_a_journal_write_that_fails_in_the_writer_thread_surfaces_at_the_next_flush(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path / "j.sqlite3", resume=False)
    journal.record("q0", 1, JournalState.RUNNING)
    journal.flush()
    with sqlite3.connect(tmp_path / "j.sqlite3") as other:
        other.execute("DROP TABLE transitions")
    journal.record("q0", 1, JournalState.SUCCESS)
    journal.flush_if_due(1e9)  # handed to the writer: the loop does not wait, nor raise
    with pytest.raises(sqlite3.OperationalError, match="transitions"):
        journal.flush()
    journal.flush()  # reported once
    journal.close()


def test_a_journal_batch_is_committed_whole_or_not_at_all(tmp_path: Path) -> None:
    # (one transaction per batch: committing each row on its own cost ~15 us of CPU a row)
    journal = Journal(tmp_path / "j.sqlite3", resume=False)
    journal.record("q0", 1, JournalState.RUNNING)
    journal.record(None, 1, JournalState.SUCCESS)  # type: ignore[arg-type]  # breaks NOT NULL
    with pytest.raises(sqlite3.IntegrityError):
        journal.flush()
    assert journal.last_states() == {}
    journal.record("q0", 1, JournalState.SUCCESS)
    journal.flush()
    assert journal.last_states() == {"q0": JournalState.SUCCESS}
    journal.close()
