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
        """``busy_s``: time since the first dispatch (for throughput). Costs a constant per
        task label, running quantum, worker and listed failure: never a walk over the graph."""
        labels = self.labels
        by_label = {
            label: {s.value: n for s, n in counts.items() if n}
            for label, counts in self.state.label_counts.items()
        }
        running = [
            RunningInfo(d.quantum_id, labels[d.quantum_id], w.worker_id, now - d.sent_at)
            for w in self.registry.workers()
            for d in w.in_flight.values()
        ]
        failures = []
        for qid in self.state.failed[-_MAX_FAILURES:]:
            rec = self.ledger.records[qid]
            reason = rec.reason.value if rec.reason else self.state.state[qid].value
            failures.append(
                FailureInfo(qid, labels[qid], reason, self.ledger.describe(qid), rec.log_path)
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
            failures=failures,
            workers=workers,
            throughput_per_s=done / busy_s if busy_s > 0 else 0.0,
            eta_s=self._eta(),
            stopping=stopping,
        )

    def _eta(self) -> float | None:
        """Remaining work over the ready workers: learned mean durations per label, and for a
        label not seen yet the mean over the labels seen so far (refined as they run). None
        until one quantum has finished."""
        left = {
            label: sum(n for s, n in counts.items() if not s.terminal)
            for label, counts in self.state.label_counts.items()
        }
        learned = [label for label in left if self.scheduler.learned(label)]
        if not learned:
            return None
        guess = sum(self.scheduler.estimate(label) for label in learned) / len(learned)
        work = sum(
            n * (self.scheduler.estimate(label) if self.scheduler.learned(label) else guess)
            for label, n in left.items()
        )
        return work / max(1, self.registry.ready_count())
