"""What happened to each quantum (attempts, worker, times, exit, cause) and the report built
from it. Pure bookkeeping: no sockets, processes or clock of its own.

Per quantum only numbers in flat arrays; text (messages, causes, log paths) only for quanta
that have some, so a million no-op quanta cost a few tens of bytes each.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterator
from dataclasses import dataclass

from broker.core.state import GraphState, QState
from common.errors import MPGraphExecutorError, MPTimeoutError
from common.graph import QuantumGraph
from common.protocol import Result
from common.report import (
    AttemptDetails,
    Caveat,
    ExceptionInfo,
    ExecutionStatus,
    QuantumDetails,
    QuantumReport,
    Reason,
    Report,
    lsst_quantum_id,
)

__all__ = ["Ledger", "Problem"]

_STATUS = {
    QState.SUCCEEDED: ExecutionStatus.SUCCESS,
    QState.FAILED: ExecutionStatus.FAILURE,
    QState.TIMED_OUT: ExecutionStatus.TIMEOUT,
}
_NONE = math.nan  # an unset time


@dataclass(frozen=True, slots=True)
class Problem:
    """How an attempt went wrong (or a note on a quantum): kept only for quanta with one."""

    exit_code: int | None = None
    exc_class: str | None = None
    message: str | None = None
    reason: Reason | None = None


_NO_PROBLEM = Problem()
_RESUMED_NOTE = Problem(message="completed by an earlier run")


class Ledger:
    """One row of numbers per quantum of ``graph``; builds the Report and the run's error."""

    def __init__(self, graph: QuantumGraph, *, in_process: bool) -> None:
        n = len(graph)
        self._graph = graph
        self._in_process = in_process
        self.attempts = array("H", bytes(2 * n))
        self._worker = array("i", [-1]) * n  # index into _workers
        self._workers: list[str] = []
        self._worker_index: dict[str, int] = {}
        self._start = array("d", [_NONE]) * n
        self._end = array("d", [_NONE]) * n
        self._rss = array("q", [-1]) * n
        self._cpu = array("f", [_NONE]) * n
        self._wall = array("f", [_NONE]) * n
        self._request = array("f", [_NONE]) * n  # MiB declared by the last attempt
        self._earlier: dict[int, list[AttemptDetails]] = {}  # quanta tried again only
        self._ended_attempt = array("H", bytes(2 * n))  # the last attempt that ended
        self.put_back: dict[int, int] = {}  # quanta memory pressure put back, how often
        self.problems: dict[int, Problem] = {}
        self.log_paths: dict[int, str] = {}
        self.caveats: dict[int, Caveat] = {}  # successes with a note
        self._resumed = bytearray(n)  # finished by an earlier run
        self.first_problem: int | None = None

    def resumed(self, done: list[int]) -> None:
        """Quanta an earlier run finished (their outputs are in the repository)."""
        for i in done:
            self._resumed[i] = 1

    def dispatched(
        self, i: int, worker_id: str, wall_now: float, request_mb: float | None = None
    ) -> int:
        """Count a new attempt (declaring ``request_mb`` of memory); returns its number
        (1-based). The one before it, if it ended, is kept among the quantum's earlier ones."""
        w = self._worker_index.get(worker_id)
        if w is None:
            w = self._worker_index[worker_id] = len(self._workers)
            self._workers.append(worker_id)
        if self.attempts[i] and self._ended_attempt[i] == self.attempts[i]:
            earlier = self._earlier.setdefault(i, [])
            if not earlier or earlier[-1].attempt != self.attempts[i]:  # (once, if taken back)
                earlier.append(self._last_attempt(i))
        self._request[i] = _NONE if request_mb is None else request_mb
        self.attempts[i] += 1
        self._worker[i], self._start[i], self._end[i] = w, wall_now, _NONE
        return self.attempts[i]

    def undispatched(self, i: int) -> None:
        """A dispatched attempt was taken back before it started: it does not count."""
        self.attempts[i] -= 1
        self._worker[i], self._start[i] = -1, _NONE

    def _last_attempt(self, i: int) -> AttemptDetails:
        rss, request, wall = self._rss[i], self._request[i], self._wall[i]
        return AttemptDetails(
            attempt=self.attempts[i],
            memoryRequest=None if math.isnan(request) else request,
            maxRss=rss if rss >= 0 else None,
            reason=self.problem(i).reason,
            wallTime=None if math.isnan(wall) else wall,
        )

    def lost_attempt(self, i: int, reason: Reason, message: str) -> None:
        """The current attempt ended without a result and will be tried again."""
        self._ended_attempt[i] = self.attempts[i]
        self._rss[i], self._wall[i] = -1, _NONE
        self.problems[i] = Problem(None, None, message, reason)

    def pressured(self, i: int) -> None:
        """Memory pressure stopped the current attempt and put the quantum back (it is not
        counted as an attempt)."""
        self.put_back[i] = self.put_back.get(i, 0) + 1
        self.undispatched(i)

    def result(self, i: int, result: Result) -> None:
        if result.start_time:
            self._start[i] = result.start_time
        self._end[i] = result.end_time
        self._ended_attempt[i] = result.attempt
        self._rss[i] = -1 if result.max_rss_kb is None else result.max_rss_kb
        self._cpu[i] = _NONE if result.cpu_s is None else result.cpu_s
        self._wall[i] = result.duration_s
        if result.log_path is not None:
            self.log_paths[i] = result.log_path
        else:
            self.log_paths.pop(i, None)
        if result.caveat is not None:
            self.caveats[i] = result.caveat
        if result.reason is None and result.exc_class is None and not result.exc_message:
            self.problems.pop(i, None)
            return
        self.problems[i] = Problem(
            result.exit_code, result.exc_class, result.exc_message, result.reason
        )
        if result.reason and self.first_problem is None:
            self.first_problem = i

    def lost(
        self, i: int, reason: Reason, message: str, wall_now: float, exit_code: int | None = None
    ) -> None:
        self.problems[i] = Problem(exit_code, None, message, reason)
        self._end[i] = wall_now
        if self.first_problem is None:
            self.first_problem = i

    def problem(self, i: int) -> Problem:
        found = self.problems.get(i)
        if found is not None:
            return found
        return _RESUMED_NOTE if self._resumed[i] else _NO_PROBLEM

    def log_path(self, i: int) -> str | None:
        return self.log_paths.get(i)

    def describe(self, i: int) -> str:
        p = self.problem(i)
        what = f"{p.exc_class}: {p.message}" if p.exc_class else (p.message or "failed")
        if len(what) > 500:
            what = what[:500] + "..."
        return f"{self._graph.ids[i]} ({self._graph.label_at(i)}): {what}"

    def error(self, state: GraphState) -> MPGraphExecutorError | None:
        """The error ``execute()`` raises for this outcome, or None if all succeeded."""
        failed, timed_out = state.count(QState.FAILED), state.count(QState.TIMED_OUT)
        skipped, cancelled = state.count(QState.SKIPPED), state.count(QState.CANCELLED)
        if failed + timed_out + skipped + cancelled == 0:
            return None
        parts = [
            f"{n} {what}"
            for n, what in (
                (failed, "failed"),
                (timed_out, "timed out"),
                (skipped, "skipped after a failure"),
                (cancelled, "cancelled"),
            )
            if n
        ]
        text = f"{', '.join(parts)} of {len(self._graph)} quanta"
        first = self.first_problem
        if first is not None:
            text += f"; first problem: {self.describe(first)}"
        if failed == 0 and timed_out > 0:
            return MPTimeoutError(text)
        return MPGraphExecutorError(text)

    def report(self, state: GraphState, error: Exception | None) -> Report:
        """The run's report; its per-quantum entries are built when read (``entries``), so
        writing the summary of a million quanta never holds them all."""
        counts = {s: 0 for s in ExecutionStatus}
        for qstate in QState:
            counts[_STATUS.get(qstate, ExecutionStatus.SKIPPED)] += state.count(qstate)
        report = Report(taskCounts=self._graph.task_counts())
        report.set_entries(lambda: self.entries(state), counts)
        if error is not None:
            timeouts_only = isinstance(error, MPTimeoutError)
            report.status = ExecutionStatus.TIMEOUT if timeouts_only else ExecutionStatus.FAILURE
            report.exceptionInfo = ExceptionInfo(type(error).__name__, str(error))
            first = self.first_problem
            report.exitCode = self.problem(first).exit_code if first is not None else 1
            if report.exitCode in (None, 0):
                report.exitCode = 1
        return report

    def entries(self, state: GraphState) -> Iterator[tuple[QuantumReport, QuantumDetails]]:
        """Each quantum's LSST report and our details, in graph order."""
        g = self._graph
        for i, qid in enumerate(g.ids):
            qstate = state.state(i)
            p = self.problem(i)
            status = _STATUS.get(qstate, ExecutionStatus.SKIPPED)
            reason = p.reason
            blocked: tuple[str, ...] = ()
            if qstate is QState.SKIPPED:
                reason = Reason.UPSTREAM_FAILURE
                blocked = tuple(sorted(g.ids[b] for b in state.blocked_by[i]))
            elif not qstate.terminal or qstate is QState.CANCELLED:
                reason, status = Reason.CANCELLED, ExecutionStatus.SKIPPED
            exit_code = p.exit_code
            if qstate is QState.SUCCEEDED:
                exit_code, reason = (None if self._in_process else 0), None
            exc = None
            if status is ExecutionStatus.FAILURE and p.reason is Reason.EXCEPTION:
                exc = ExceptionInfo(p.exc_class or "Exception", p.message or "")
            key = lsst_quantum_id(qid)
            data_id = g.payload_at(i)[0]
            w, rss = self._worker[i], self._rss[i]
            cpu, wall, request = self._cpu[i], self._wall[i], self._request[i]
            yield (
                QuantumReport(
                    quantumId=key,
                    taskLabel=g.label_at(i),
                    dataId=data_id,
                    status=status,
                    exitCode=exit_code if status is not ExecutionStatus.SKIPPED else None,
                    exceptionInfo=exc,
                ),
                QuantumDetails(
                    id=qid,
                    reason=reason,
                    message=p.message,
                    attempts=self.attempts[i],
                    worker=self._workers[w] if w >= 0 else None,
                    startTime=_time(self._start[i]),
                    endTime=_time(self._end[i]),
                    maxRss=rss if rss >= 0 else None,
                    logPath=self.log_paths.get(i),
                    blockedBy=blocked,
                    cpuTime=_time(cpu),
                    wallTime=_time(wall),
                    memoryRequest=_time(request),
                    earlier=tuple(self._earlier.get(i, ())),
                    putBack=self.put_back.get(i, 0),
                    caveat=self.caveats.get(i) if qstate is QState.SUCCEEDED else None,
                ),
            )


def _time(t: float) -> float | None:
    return None if math.isnan(t) else t
