"""The run's intermediate footprint: datasets a finished quantum wrote that some quantum still
has to read. A breadth-first order keeps every detector's intermediates alive at once
(hundreds of GB for real isr outputs); this counts them, now and at the peak.

Pure bookkeeping: told when quanta succeed and end; memory in proportion to what is alive.
"""

from __future__ import annotations

from broker.core.state import GraphState
from common.graph import QuantumGraph

__all__ = ["Footprint"]


class Footprint:
    """Unread intermediate datasets of ``graph``, by the number of readers still to end."""

    def __init__(self, graph: QuantumGraph, state: GraphState) -> None:
        self._t = graph.topology
        self._ds = graph.datasets
        self._state = state
        self._readers_left: dict[int, int] = {}  # dataset -> readers that have not ended
        self.peak = 0

    @property
    def alive(self) -> int:
        return len(self._readers_left)

    def produced(self, i: int) -> None:
        """``i`` succeeded: each output some unfinished quantum reads is now alive."""
        outputs = self._ds.outputs_of(i)
        if not outputs:
            return
        readers: dict[int, int] = {}
        for child in self._t.successors(i):
            if self._state.state(child).terminal:
                continue
            for ds in self._ds.inputs_of(child):
                readers[ds] = readers.get(ds, 0) + 1
        for ds in outputs:
            if readers.get(ds):
                self._readers_left[ds] = readers[ds]
        self.peak = max(self.peak, len(self._readers_left))

    def ended(self, i: int) -> None:
        """``i`` ended (however): it will not read its inputs any more."""
        left_of = self._readers_left
        if not left_of:
            return
        for ds in self._ds.inputs_of(i):
            left = left_of.get(ds)
            if left is None:
                continue
            if left <= 1:
                del left_of[ds]
            else:
                left_of[ds] = left - 1
