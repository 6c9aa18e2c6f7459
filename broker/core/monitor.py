"""Builds a RunStatus from the broker's cores, for progress displays and status requests.

Pure: reads the cores it is given, with an explicit ``now``; changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.core.ledger import Ledger
from broker.core.registry import WorkerRegistry
from broker.core.scheduler import Scheduler
from broker.core.state import GraphState, QState
from common.graph import QuantumGraph
from common.status import FailureInfo, RunningInfo, RunStatus, WorkerSummary

__all__ = ["Monitor"]

_MAX_FAILURES = 20  # most recent problems listed in a status


@dataclass(frozen=True, slots=True)
class Monitor:
    graph: QuantumGraph
    state: GraphState
    scheduler: Scheduler
    registry: WorkerRegistry
    ledger: Ledger

    def snapshot(
        self, now: float, elapsed_s: float, busy_s: float, stopping: str | None
    ) -> RunStatus:
        """``busy_s``: time since the first dispatch (for throughput). Costs a constant per
        task label, running quantum, worker and listed failure: never a walk over the graph."""
        g = self.graph
        by_label = {
            label: {s.word: n for s, n in counts.items()}
            for label, counts in self.state.label_counts().items()
        }
        running = [
            RunningInfo(d.quantum_id, g.label_at(d.index), w.worker_id, now - d.sent_at)
            for w in self.registry.workers()
            for d in w.in_flight.values()
        ]
        failures = []
        for i in self.state.failed[-_MAX_FAILURES:]:
            problem = self.ledger.problem(i)
            reason = problem.reason.value if problem.reason else self.state.state(i).word
            failures.append(
                FailureInfo(
                    g.ids[i],
                    g.label_at(i),
                    reason,
                    self.ledger.describe(i),
                    self.ledger.log_path(i),
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
            failures=failures,
            workers=workers,
            throughput_per_s=done / busy_s if busy_s > 0 else 0.0,
            eta_s=self._eta(busy_s),
            stopping=stopping,
        )

    def _eta(self, busy_s: float) -> float | None:
        """Remaining work at the rate work has been done so far. Work is quanta weighted by
        their label's mean duration (a label not seen yet: the mean over the labels seen,
        refined as they run: ``Scheduler.work_left_s``); the rate is work done per second of
        the run, so dispatch overhead and idle workers count as they have so far. None until a
        quantum finished."""
        done = self.scheduler.observed_s()
        if busy_s <= 0 or done <= 0:
            return None
        return self.scheduler.work_left_s * busy_s / done
