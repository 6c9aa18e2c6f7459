"""The broker core driven with events and explicit ``now`` values: no sockets, no processes.

A tiny driver (``Harness``) plays the workers: it joins them, collects the actions, and turns a
dispatch into a result when a test says so.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from broker.core import (
    BACKSTOP_GRACE_S,
    ORPHAN_GRACE_S,
    STARTUP_HOLD_S,
    STEAL_AFTER_S,
    BrokerCore,
)
from broker.core.events import (
    Action,
    AdmitWorker,
    Dispatch,
    Event,
    ExecutorGone,
    ExecutorUnreachable,
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
from broker.core.planner import FIXED
from broker.core.state import QState
from broker.journal import Journal, JournalState
from common.config import ExecutionConfig
from common.graph import QuantumGraph
from common.protocol import ExecutorExited, Result, ResultStatus
from common.report import ExecutionStatus, Reason
from tests.graphs import chain, independent, quantum

A, B, C = b"wa", b"wb", b"wc"


def result(
    d: Dispatch, status: ResultStatus = ResultStatus.SUCCESS, duration_s: float = 0.5, **kw: Any
) -> Result:
    reason = None if status is ResultStatus.SUCCESS else Reason.EXCEPTION
    base = Result(
        d.quantum_id, d.attempt, status, 0, None, None, reason, 1.0, 2.0, duration_s, None, None
    )
    return replace(base, **kw)


class Harness:
    """Drives a core; ``now`` only moves when a test moves it."""

    def __init__(self, graph: QuantumGraph, workers: int = 0, **config: Any) -> None:
        config.setdefault("num_workers", max(2, workers))
        config.setdefault("local_workers", workers)
        journal = config.pop("journal", None)
        done = [graph.index(qid) for qid in config.pop("done", ())]
        follow_ons = config.pop("follow_ons", False)
        spawns = config.pop("spawns", False)
        transport = config.pop("transport", FIXED)
        self.core = BrokerCore(
            graph,
            ExecutionConfig(**config),
            journal=journal,
            done=done,
            follow_ons=follow_ons,
            spawns=spawns,
            transport=transport,
            wall=lambda: 1000.0,
        )
        self.now = 0.0
        self.actions: list[Action] = self.core.start(self.now)

    def step(self, *events: Event, at: float | None = None) -> list[Action]:
        if at is not None:
            self.now = at
        self.actions = self.core.step(list(events), self.now)
        return self.actions

    def join(self, worker: bytes, slots: int = 1, *, local: bool = True, pid: int = 0) -> None:
        self.step(
            WorkerJoined(worker, pid or len(worker), "host", slots, local), WorkerReady(worker)
        )

    def dispatches(self, worker: bytes | None = None) -> list[Dispatch]:
        return [
            a
            for a in self.actions
            if isinstance(a, Dispatch) and (worker is None or a.worker == worker)
        ]

    def of(self, kind: type[Any]) -> list[Any]:
        return [a for a in self.actions if isinstance(a, kind)]

    def state(self, qid: str) -> QState:
        return self.core.state.state(self.core.graph.index(qid))

    def attempts(self, qid: str) -> int:
        return self.core.ledger.attempts[self.core.graph.index(qid)]

    def reason(self, qid: str) -> Reason | None:
        return self.core.ledger.problem(self.core.graph.index(qid)).reason

    def ids(self, indices: Iterable[int]) -> set[str]:
        return {self.core.graph.ids[i] for i in indices}


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


def _chains(n: int, length: int = 3) -> QuantumGraph:
    return QuantumGraph.from_quanta(
        [
            quantum(f"c{c}-{i}", label=f"step{i}", inputs=[f"c{c}-{i - 1}"] if i else [])
            for c in range(n)
            for i in range(length)
        ]
    )


def _run_to_end(h: Harness, worker: bytes) -> list[str]:
    """Answer every dispatch with a success, one at a time; the dispatch order."""
    order = []
    while not h.core.over:
        (d,) = h.dispatches(worker)
        order.append(d.quantum_id)
        # (its agent heartbeats meanwhile: a result proves only the executor child)
        h.step(ResultReceived(worker, result(d)), WorkerHeard(worker), at=h.now + 1)
    return order


def test_wide_graphs_finish_chains_before_starting_new_ones() -> None:
    # Given 8 independent chains of 3 and one worker (critical path is no constraint)
    h = Harness(_chains(8), workers=1)
    h.join(A)
    order = _run_to_end(h, A)
    # Then each chain runs start to end before the next begins (depth-first)
    chains = [qid.split("-")[0] for qid in order]
    assert all(len(set(chains[i : i + 3])) == 1 for i in range(0, len(order), 3))
    # and at most one intermediate is alive at a time (breadth-first would keep 8)
    assert h.core.report(None).figures["peakIntermediates"] == 1


def _pipeline(visits: int, group: int) -> QuantumGraph:
    """W3-shaped: per visit isr -> calibrate -> measure; a coadd per ``group`` visits' measures;
    a final quantum reading every coadd."""
    quanta = []
    for v in range(visits):
        quanta += [
            quantum(f"isr{v}", label="isr"),
            quantum(f"cal{v}", label="cal", inputs=[f"isr{v}"]),
            quantum(f"meas{v}", label="meas", inputs=[f"cal{v}"]),
        ]
    coadds = [f"coadd{c}" for c in range(visits // group)]
    for c, name in enumerate(coadds):
        members = [f"meas{v}" for v in range(c * group, (c + 1) * group)]
        quanta.append(quantum(name, label="coadd", inputs=members))
    quanta.append(quantum("final", label="final", inputs=coadds))
    return QuantumGraph.from_quanta(quanta)


def _simulate(
    h: Harness, workers: list[bytes], seconds: float = 1.0, coadd_s: float | None = None
) -> float:
    """Play ``workers`` (one slot each) in simulated time, every quantum taking ``seconds``
    (coadds ``coadd_s`` if given); the makespan."""

    def took(d: Dispatch) -> float:
        slow = coadd_s is not None and d.quantum_id.startswith("coadd")
        return coadd_s if slow and coadd_s is not None else seconds

    for w in workers:
        h.join(w)
    running = sorted((h.now + took(d), n, d) for n, d in enumerate(h.dispatches()))
    n = len(running)
    while not h.core.over:
        end, _, d = running.pop(0)
        heard = [WorkerHeard(w) for w in workers]  # their agents heartbeat meanwhile
        h.step(ResultReceived(d.worker, result(d, duration_s=took(d))), *heard, at=end)
        for d in h.dispatches():
            running.append((end + took(d), n, d))
            n += 1
        running.sort()
    return h.now


def test_the_end_of_a_run_goes_by_critical_path_and_the_rest_depth_first() -> None:
    # Given a W3-shaped graph of 100 visits and 2 workers, 1 s per quantum
    graph = _pipeline(100, 10)
    h = Harness(graph, workers=2)
    makespan = _simulate(h, [A, B])
    # Then it ends as soon as two workers can: every pair of quanta side by side, the final one
    # alone (where children just released always went first, the last visit ran alone: +2 s)
    assert makespan == (len(graph) + 1) / 2
    # and the intermediates stay few: chains still finish before new ones start but in the
    # last few (critical-path order throughout keeps 100 alive, one per visit)
    assert h.core.report(None).figures["peakIntermediates"] <= 30


def test_a_label_not_seen_yet_does_not_end_depth_first_order_early() -> None:
    # Given the same graph of 1 ms quanta: the coadd and final labels are not learned until
    # late, and weighed at a 1 s guess they made the path look like most of the work left
    h = Harness(_pipeline(100, 10), workers=2)
    _simulate(h, [A, B], seconds=0.001)
    # Then chains still finish before new ones start until the last 48 quanta a worker (this
    # peaked at 100: breadth-first from 40% of the run on)
    assert h.core.report(None).figures["peakIntermediates"] <= 50


def test_slow_coadds_do_not_end_depth_first_order_early() -> None:
    # Given the same graph of 1 ms quanta whose coadds take 0.5 s: once one has run, the path
    # every visit leads to weighs much of the work left, where the order hardly matters
    h = Harness(_pipeline(100, 10), workers=2)
    _simulate(h, [A, B], seconds=0.001, coadd_s=0.5)
    # Then chains still finish before new ones start until the last 48 quanta a worker (this
    # peaked at 82 with the endgame begun by the time bound alone; breadth-first keeps 100)
    assert h.core.report(None).figures["peakIntermediates"] <= 50


def test_quanta_no_finished_parent_released_go_critical_path_first() -> None:
    # Given a chain of 6 beside 6 independent quanta, and two workers
    graph = QuantumGraph.from_quanta(
        [quantum(f"long{i}", label="long", inputs=[f"long{i - 1}"] if i else []) for i in range(6)]
        + [quantum(f"short{i}", label="short") for i in range(6)]
    )
    h = Harness(graph, workers=2)
    h.join(A)
    h.join(B)
    # Then the chain's head is among the first dispatched: it is as long as all the rest
    assert "long0" in {d.quantum_id for d in h.dispatches()}


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


def exited(generation: int, last_seq: int, running: bool, code: int = -11) -> ExecutorExited:
    status = ResultStatus.FAILURE
    reason = Reason.SIGNAL if running else None
    detail = "executor process killed by signal 11 (SIGSEGV)"
    return ExecutorExited(
        generation, last_seq, running, status, code, reason, detail, 5.0, 6.0, None
    )


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


def test_prefetching_is_judged_by_how_often_released_quanta_outrank_the_queued_one() -> None:
    # Given one worker holding two quanta: a chain (s0 -> s1 -> ...) beside independent ones
    spine = [quantum(f"s{i}", inputs=[f"s{i - 1}"] if i else []) for i in range(20)]
    side = [quantum(f"x{i}") for i in range(40)]
    h = Harness(QuantumGraph.from_quanta(spine + side), workers=1)
    h.join(A, slots=2)
    assert h.core.prefetch_cost_s() == 0.0
    # When each chain quantum finishes, the next one (a longer path below it than any other)
    # is released while an independent quantum queued on the worker runs first
    held = {d.quantum_id: d for d in h.dispatches(A)}
    for _ in range(17):  # (one release in eight is looked at: three are)
        for prefix in ("s", "x"):
            d = next(d for qid, d in held.items() if qid.startswith(prefix))
            h.step(ResultReceived(A, result(d, duration_s=0.5)), WorkerHeard(A), at=h.now + 1)
            del held[d.quantum_id]
            held.update({d.quantum_id: d for d in h.dispatches(A)})
    # Then queueing costs about the mean duration per completion (drivers stop queueing)
    assert h.core.prefetch_cost_s() == pytest.approx(0.5)
    assert h.core._samples == 3


def test_prefetching_costs_nothing_where_nothing_is_released() -> None:
    h = Harness(independent(20), workers=1)
    h.join(A, slots=2)
    for _ in range(10):
        d = h.dispatches()[0]
        h.step(ResultReceived(A, result(d)), at=h.now + 1)
    assert h.core.prefetch_cost_s() == 0.0


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


# ---------------------------------------------------------------------- follow-ons
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
