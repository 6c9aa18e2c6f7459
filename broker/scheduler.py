"""Scheduling policy: which ready quantum runs next. Longest remaining path to a sink first
(critical path), weighted by durations learned per task label; ties by graph order. The
driver may ``take`` a particular ready quantum instead (a child its parent just released:
chains continue where they ran, depth-first).

Pure: no clock, sockets or processes; durations come in as plain numbers.
"""

from __future__ import annotations

import heapq

import networkx as nx

__all__ = ["Scheduler"]

_DEFAULT_ESTIMATE_S = 1.0  # before anything is learned, every quantum weighs the same
_RELATIVE_CHANGE = 0.25  # re-rank when a label's estimate moved this much ...
_ABSOLUTE_CHANGE_S = 0.001  # ... and by at least this many seconds


class Scheduler:
    """A priority queue of ready quanta keyed by (critical path, graph order)."""

    def __init__(self, xgraph: nx.DiGraph[str], labels: dict[str, str]) -> None:
        self._g = xgraph
        self._labels = labels
        self._order = {qid: i for i, qid in enumerate(nx.topological_sort(xgraph))}
        self._estimates: dict[str, float] = {}
        self._sums: dict[str, tuple[float, int]] = {}
        self._ranked_with: dict[str, float] = {}
        self._dirty = False
        self._priority: dict[str, float] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._queued: set[str] = set()
        self._rank()

    def learned(self, label: str) -> bool:
        return label in self._estimates

    def estimate(self, label: str) -> float:
        return self._estimates.get(label, _DEFAULT_ESTIMATE_S)

    def priority(self, qid: str) -> float:
        return self._priority[qid]

    def _rank(self) -> None:
        """Bottom levels: own estimate plus the heaviest path below."""
        prio: dict[str, float] = {}
        for qid in sorted(self._order, key=self._order.__getitem__, reverse=True):
            below = max((prio[c] for c in self._g.successors(qid)), default=0.0)
            prio[qid] = self.estimate(self._labels[qid]) + below
        self._priority = prio
        self._ranked_with = dict(self._estimates)
        self._dirty = False
        self._heap = [(-prio[q], self._order[q], q) for q in self._queued]
        heapq.heapify(self._heap)

    def learn(self, label: str, duration_s: float) -> None:
        """Fold in one observed duration (mean per label)."""
        total, n = self._sums.get(label, (0.0, 0))
        total, n = total + duration_s, n + 1
        self._sums[label] = (total, n)
        new = total / n
        self._estimates[label] = new
        old = self._ranked_with.get(label, _DEFAULT_ESTIMATE_S)
        if abs(new - old) > max(_ABSOLUTE_CHANGE_S, _RELATIVE_CHANGE * old):
            self._dirty = True

    def push(self, qid: str) -> None:
        if qid in self._queued:
            return
        self._queued.add(qid)
        heapq.heappush(self._heap, (-self._priority[qid], self._order[qid], qid))

    def pop(self) -> str | None:
        """The most critical ready quantum (longest path below it, then graph order)."""
        if self._dirty:
            self._rank()
        while self._heap:
            _, _, qid = heapq.heappop(self._heap)
            if qid in self._queued:
                self._queued.discard(qid)
                return qid
        return None

    def take(self, qid: str) -> bool:
        """Take ``qid`` out of the ready set if it is there (its heap entry goes stale)."""
        if qid not in self._queued:
            return False
        self._queued.discard(qid)
        return True

    def discard(self, qid: str) -> None:
        self._queued.discard(qid)

    def __len__(self) -> int:
        return len(self._queued)
