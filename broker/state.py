"""The graph state machine: which quanta wait, are ready, run, and how each ended.

Pure: plain values in, plain values out; no clock, sockets or processes.

    PENDING --(parents done)--> READY --start--> RUNNING --succeed--> SUCCEEDED
                                  ^                 |--fail/time out--> FAILED / TIMED_OUT
                                  +----requeue------+         (descendants -> SKIPPED, blocked_by)
    any non-terminal --cancel--> CANCELLED
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

import networkx as nx

__all__ = ["GraphState", "QState"]


class QState(enum.Enum):
    PENDING = "pending"
    READY = "ready"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset(
    {QState.SUCCEEDED, QState.FAILED, QState.TIMED_OUT, QState.SKIPPED, QState.CANCELLED}
)


class GraphState:
    """Tracks every quantum of ``xgraph`` (node ids are quantum ids). With ``labels`` (task
    label by quantum id) it also keeps counts per label and state, so a status costs a constant
    per label, not a walk over the graph."""

    def __init__(self, xgraph: nx.DiGraph[str], labels: dict[str, str] | None = None) -> None:
        self._g = xgraph
        self._waiting = {qid: int(xgraph.in_degree(qid)) for qid in xgraph}
        self.state = {qid: QState.PENDING for qid in xgraph}
        self.blocked_by: dict[str, set[str]] = {}
        self.failed: list[str] = []  # failed and timed-out quanta, in the order they ended
        self._open = len(self.state)
        self._counts = dict.fromkeys(QState, 0)
        self._counts[QState.PENDING] = len(self.state)
        self._labels = labels
        self.label_counts: dict[str, dict[QState, int]] = {}
        for label in (labels or {}).values():
            counts = self.label_counts.setdefault(label, dict.fromkeys(QState, 0))
            counts[QState.PENDING] += 1

    def preset_succeeded(self, qids: set[str]) -> None:
        """Quanta finished by an earlier run (resume): call before ``initial_ready``."""
        for qid in qids:
            self._set(qid, QState.SUCCEEDED)
            for child in self._g.successors(qid):
                self._waiting[child] -= 1

    def initial_ready(self) -> list[str]:
        """Quanta whose parents are all done: call once, before anything starts."""
        roots = [
            qid for qid, n in self._waiting.items() if n == 0 and self.state[qid] is QState.PENDING
        ]
        for qid in roots:
            self._set(qid, QState.READY)
        return roots

    @property
    def finished(self) -> bool:
        return self._open == 0

    def count(self, state: QState) -> int:
        return self._counts[state]

    def _set(self, qid: str, new: QState) -> None:
        old = self.state[qid]
        if old.terminal:
            raise ValueError(f"quantum {qid!r} is already {old.value}")
        self._counts[old] -= 1
        self._counts[new] += 1
        if self._labels is not None:
            counts = self.label_counts[self._labels[qid]]
            counts[old] -= 1
            counts[new] += 1
        self.state[qid] = new
        if new.terminal:
            self._open -= 1
        if new in (QState.FAILED, QState.TIMED_OUT):
            self.failed.append(qid)

    def _expect(self, qid: str, *allowed: QState) -> None:
        if self.state[qid] not in allowed:
            raise ValueError(
                f"quantum {qid!r} is {self.state[qid].value}, expected "
                + " or ".join(s.value for s in allowed)
            )

    def start(self, qid: str) -> None:
        self._expect(qid, QState.READY)
        self._set(qid, QState.RUNNING)

    def requeue(self, qid: str) -> None:
        """A running quantum goes back to READY (its worker was lost and it may retry)."""
        self._expect(qid, QState.RUNNING)
        self._set(qid, QState.READY)

    def succeed(self, qid: str) -> list[str]:
        """Mark done; return the children that became ready."""
        self._expect(qid, QState.RUNNING, QState.READY)
        self._set(qid, QState.SUCCEEDED)
        ready = []
        for child in self._g.successors(qid):
            self._waiting[child] -= 1
            if self._waiting[child] == 0 and self.state[child] is QState.PENDING:
                self._set(child, QState.READY)
                ready.append(child)
        return ready

    def fail(self, qid: str, *, timed_out: bool = False) -> list[str]:
        """Mark failed (or timed out); skip every unfinished descendant. Returns the skipped."""
        self._expect(qid, QState.RUNNING, QState.READY)
        self._set(qid, QState.TIMED_OUT if timed_out else QState.FAILED)
        skipped = []
        for d in nx.descendants(self._g, qid):
            self.blocked_by.setdefault(d, set()).add(qid)
            if not self.state[d].terminal:
                self._set(d, QState.SKIPPED)
                skipped.append(d)
        return skipped

    def cancel(self, qids: Iterable[str] | None = None) -> list[str]:
        """Cancel the given (default: all) unfinished quanta; returns those cancelled."""
        targets = self.state if qids is None else qids
        cancelled = [qid for qid in targets if not self.state[qid].terminal]
        for qid in cancelled:
            self._set(qid, QState.CANCELLED)
        return cancelled

    def in_state(self, state: QState) -> list[str]:
        return [qid for qid, s in self.state.items() if s is state]
