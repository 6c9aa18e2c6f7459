"""Builds a RunStatus from the broker's cores, for progress displays and status requests.

Pure: reads the cores it is given, with an explicit ``now``; changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.ledger import Ledger
from broker.registry import WorkerRegistry
from broker.scheduler import Scheduler
from broker.state import GraphState, QState
from common.graph import QuantumGraph
from common.status import FailureInfo, RunningInfo, RunStatus, WorkerSummary

__all__ = ["Monitor"]

_MAX_FAILURES = 20  # most recent problems listed in a status


@dataclass(frozen=True, slots=True)
class Monitor:
    graph: QuantumGraph
    labels: dict[str, str]  # task label by quantum id, built once (snapshots run often)
    state: GraphState
    scheduler: Scheduler
    registry: WorkerRegistry
    ledger: Ledger

    def snapshot(
        self, now: float, elapsed_s: float, busy_s: float, stopping: str | None
    ) -> RunStatus:
        """``busy_s``: time since the first dispatch (for throughput)."""
        labels = self.labels
        by_label: dict[str, dict[str, int]] = {}
        for qid, s in self.state.state.items():
            counts = by_label.setdefault(labels[qid], {})
            counts[s.value] = counts.get(s.value, 0) + 1
        running = [
            RunningInfo(d.quantum_id, labels[d.quantum_id], w.worker_id, now - d.sent_at)
            for w in self.registry.workers()
            for d in w.in_flight.values()
        ]
        failures = []
        for qid, s in self.state.state.items():
            if s in (QState.FAILED, QState.TIMED_OUT):
                rec = self.ledger.records[qid]
                failures.append(
                    FailureInfo(
                        qid,
                        labels[qid],
                        rec.reason.value if rec.reason else s.value,
                        self.ledger.describe(qid),
                        rec.log_path,
                    )
                )
        workers = [
            WorkerSummary(w.worker_id, w.pid, w.host, w.local, len(w.in_flight), w.completed)
            for w in self.registry.workers()
        ]
        done = self.state.count(QState.SUCCEEDED)
        return RunStatus(
            elapsed_s=elapsed_s,
            total=len(self.graph),
            by_label=by_label,
            running=running,
            failures=failures[-_MAX_FAILURES:],
            workers=workers,
            throughput_per_s=done / busy_s if busy_s > 0 else 0.0,
            eta_s=self._eta(labels),
            stopping=stopping,
        )

    def _eta(self, labels: dict[str, str]) -> float | None:
        """Remaining work by learned duration per label over ready workers; None until every
        remaining label has a learned duration."""
        left = [labels[q] for q, s in self.state.state.items() if not s.terminal]
        if not all(self.scheduler.learned(label) for label in left):
            return None
        work = sum(self.scheduler.estimate(label) for label in left)
        return work / max(1, self.registry.ready_count())
