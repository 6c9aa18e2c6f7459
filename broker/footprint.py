"""The run's intermediate footprint: datasets a finished quantum wrote that some quantum still
has to read. A breadth-first order keeps every detector's intermediates alive at once
(hundreds of GB for real isr outputs); this counts them, now and at the peak.

Pure bookkeeping: told when quanta succeed and end; memory in proportion to what is alive.
"""

from __future__ import annotations

from broker.state import GraphState
from common.graph import QuantumGraph

__all__ = ["Footprint"]


class Footprint:
    """Unread intermediate datasets of ``graph``, by the number of readers still to end."""

    def __init__(self, graph: QuantumGraph, state: GraphState) -> None:
        self._graph = graph
        self._state = state
        self._readers_left: dict[str, int] = {}  # dataset -> readers that have not ended
        self.peak = 0

    @property
    def alive(self) -> int:
        return len(self._readers_left)

    def produced(self, qid: str) -> None:
        """``qid`` succeeded: each output some unfinished quantum reads is now alive."""
        g = self._graph
        readers: dict[str, int] = {}
        for child in g.xgraph.successors(qid):
            if self._state.state[child].terminal:
                continue
            for name in g.quantum(child).inputs.values():
                readers[name] = readers.get(name, 0) + 1
        for name in g.quantum(qid).outputs.values():
            if readers.get(name):
                self._readers_left[name] = readers[name]
        self.peak = max(self.peak, len(self._readers_left))

    def ended(self, qid: str) -> None:
        """``qid`` ended (however): it will not read its inputs any more."""
        for name in self._graph.quantum(qid).inputs.values():
            left = self._readers_left.get(name)
            if left is None:
                continue
            if left <= 1:
                del self._readers_left[name]
            else:
                self._readers_left[name] = left - 1
