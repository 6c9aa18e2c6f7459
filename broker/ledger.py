"""What happened to each quantum (attempts, worker, times, exit, cause) and the report built
from it. Pure bookkeeping: no sockets, processes or clock of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.state import GraphState, QState
from common.errors import MPGraphExecutorError, MPTimeoutError
from common.graph import QuantumGraph
from common.protocol import Result
from common.report import (
    ExceptionInfo,
    ExecutionStatus,
    QuantumDetails,
    QuantumReport,
    Reason,
    Report,
    lsst_quantum_id,
)

__all__ = ["Ledger", "QuantumRecord"]

_STATUS = {
    QState.SUCCEEDED: ExecutionStatus.SUCCESS,
    QState.FAILED: ExecutionStatus.FAILURE,
    QState.TIMED_OUT: ExecutionStatus.TIMEOUT,
}


@dataclass(slots=True)
class QuantumRecord:
    attempts: int = 0
    worker: str | None = None
    start_time: float | None = None
    end_time: float | None = None
    exit_code: int | None = None
    exc_class: str | None = None
    message: str | None = None
    reason: Reason | None = None
    max_rss_kb: int | None = None
    log_path: str | None = None


class Ledger:
    """One record per quantum of ``graph``; builds the Report and the run's error."""

    def __init__(self, graph: QuantumGraph, *, in_process: bool) -> None:
        self._graph = graph
        self._in_process = in_process
        self.records = {q.id: QuantumRecord() for q in graph.quanta()}
        self.first_problem: str | None = None

    def resumed(self, qids: frozenset[str]) -> None:
        """Quanta an earlier run finished (their outputs are in the repository)."""
        for qid in qids:
            self.records[qid].message = "completed by an earlier run"

    def dispatched(self, qid: str, worker_id: str, wall_now: float) -> int:
        """Count a new attempt; returns its number (1-based)."""
        rec = self.records[qid]
        rec.attempts += 1
        rec.worker, rec.start_time, rec.end_time = worker_id, wall_now, None
        return rec.attempts

    def undispatched(self, qid: str) -> None:
        """A dispatched attempt was taken back before it started: it does not count."""
        rec = self.records[qid]
        rec.attempts -= 1
        rec.worker = rec.start_time = None

    def result(self, result: Result) -> None:
        rec = self.records[result.quantum_id]
        rec.start_time = result.start_time or rec.start_time
        rec.end_time = result.end_time
        rec.exit_code = result.exit_code
        rec.exc_class, rec.message = result.exc_class, result.exc_message
        rec.reason = result.reason
        rec.max_rss_kb = result.max_rss_kb
        rec.log_path = result.log_path
        if result.reason and self.first_problem is None:
            self.first_problem = result.quantum_id

    def lost(
        self, qid: str, reason: Reason, message: str, wall_now: float, exit_code: int | None = None
    ) -> None:
        rec = self.records[qid]
        rec.reason, rec.message, rec.exit_code, rec.end_time = reason, message, exit_code, wall_now
        rec.exc_class = None
        if self.first_problem is None:
            self.first_problem = qid

    def describe(self, qid: str) -> str:
        rec = self.records[qid]
        what = f"{rec.exc_class}: {rec.message}" if rec.exc_class else (rec.message or "failed")
        if len(what) > 500:
            what = what[:500] + "..."
        return f"{qid} ({self._graph.quantum(qid).task_label}): {what}"

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
        text = f"{', '.join(parts)} of {len(self.records)} quanta"
        first = self.first_problem
        if first is not None:
            text += f"; first problem: {self.describe(first)}"
        if failed == 0 and timed_out > 0:
            return MPTimeoutError(text)
        return MPGraphExecutorError(text)

    def report(self, state: GraphState, error: Exception | None) -> Report:
        report = Report(taskCounts=self._graph.task_counts())
        for q in self._graph.quanta():
            rec, qstate = self.records[q.id], state.state[q.id]
            status = _STATUS.get(qstate, ExecutionStatus.SKIPPED)
            reason = rec.reason
            blocked: tuple[str, ...] = ()
            if qstate is QState.SKIPPED:
                reason, blocked = Reason.UPSTREAM_FAILURE, tuple(sorted(state.blocked_by[q.id]))
            elif not qstate.terminal or qstate is QState.CANCELLED:
                reason, status = Reason.CANCELLED, ExecutionStatus.SKIPPED
            exit_code = rec.exit_code
            if qstate is QState.SUCCEEDED:
                exit_code, reason = (None if self._in_process else 0), None
            exc = None
            if status is ExecutionStatus.FAILURE and rec.reason is Reason.EXCEPTION:
                exc = ExceptionInfo(rec.exc_class or "Exception", rec.message or "")
            key = lsst_quantum_id(q.id)
            report.quantaReports.append(
                QuantumReport(
                    quantumId=key,
                    taskLabel=q.task_label,
                    dataId=dict(q.data_id),
                    status=status,
                    exitCode=exit_code if status is not ExecutionStatus.SKIPPED else None,
                    exceptionInfo=exc,
                )
            )
            report.quantaDetails[key] = QuantumDetails(
                id=q.id,
                reason=reason,
                message=rec.message,
                attempts=rec.attempts,
                worker=rec.worker,
                startTime=rec.start_time,
                endTime=rec.end_time,
                maxRss=rec.max_rss_kb,
                logPath=rec.log_path,
                blockedBy=blocked,
            )
        if error is not None:
            timeouts_only = isinstance(error, MPTimeoutError)
            report.status = ExecutionStatus.TIMEOUT if timeouts_only else ExecutionStatus.FAILURE
            report.exceptionInfo = ExceptionInfo(type(error).__name__, str(error))
            first = self.first_problem
            report.exitCode = self.records[first].exit_code if first is not None else 1
            if report.exitCode in (None, 0):
                report.exitCode = 1
        return report
