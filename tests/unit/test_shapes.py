"""The order on shapes it was not tuned on (``tests.shapes``): simulated on the core at -j 2,
the intermediates alive at the peak stay within 1.5x of the graph's floor (what any order
must keep alive), and the run ends about as soon as two workers can."""

from __future__ import annotations

import itertools
import random

import networkx as nx
import pytest

from broker.core.events import Dispatch
from common.quantum import Quantum
from tests.graphs import quantum
from tests.shapes import Shape, floor, reference_peak, shapes
from tests.unit.harness import Harness, play

A, B = b"wa", b"wb"

# shape: (floor, peak of the reference order); pinned, so a change to the generator or the
# bound shows here first
EXPECTED = {
    "lsst 6v x 9d x 3p": (28, 28),
    "lsst 5v x 21d x 4p": (45, 51),
    "lsst 3v x 62d x 6p": (129, 132),
    "lsst 2v x 189d x 8p": (384, 384),
    "lsst 40v x 4d x 2p": (60, 73),
    "gathers 8v x 14d": (14, 14),
    "gathers 3v x 60d": (60, 60),
    "chains 12 x 20, gathers of 4": (6, 6),
    "chains 30 x 6, gathers of 10": (12, 12),
    "fan-ins 4 x 60": (78, 93),
    "fan-ins 1 x 150": (150, 150),
}


def _run(shape: Shape) -> tuple[int, float, float]:
    """Peak intermediates and makespan at -j 2, each quantum taking its label's seconds; and
    the makespan's lower bound (the work over two workers, or the longest path)."""
    graph = shape.graph
    seconds = {q.id: shape.seconds[q.task_label] for q in shape.quanta}

    def took(d: Dispatch) -> float:
        return seconds[d.quantum_id]

    h = Harness(graph, workers=2)
    makespan = play(h, [A, B], took)
    finish: dict[str, float] = {}
    xgraph = graph.xgraph
    for qid in nx.topological_sort(xgraph):
        below = (finish[p] for p in xgraph.predecessors(qid))
        finish[qid] = seconds[qid] + max(below, default=0.0)
    bound = max(sum(seconds.values()) / 2, max(finish.values()))
    return h.core.footprint.peak, makespan, bound


@pytest.mark.parametrize("shape", shapes(), ids=lambda s: s.name)
def test_the_order_keeps_intermediates_within_half_again_the_graphs_floor(shape: Shape) -> None:
    # Given a generated shape, its floor and the peak of a good one-worker order
    low, reference = floor(shape.quanta), reference_peak(shape.quanta)
    assert (low, reference) == EXPECTED[shape.name]
    # When it runs on two workers
    peak, makespan, bound = _run(shape)
    # Then the peak is at least the floor (the bound holds) and at most 1.5x it
    assert low <= peak <= 1.5 * low
    # and the run ends within 1.5% of the lower bound on its makespan
    assert makespan <= 1.015 * bound


def _random_graph(rng: random.Random, n: int) -> list[Quantum]:
    quanta: list[Quantum] = []
    for i in range(n):
        parents = [p for p in range(i) if rng.random() < 2.5 / (i + 1)]
        quanta.append(quantum(f"q{i}", inputs=[f"q{p}" for p in parents]))
    return quanta


def _least_peak(quanta: list[Quantum]) -> int:
    """The least peak over every order, exactly (small graphs only): the best way to reach
    each set of ended quanta closed under parents is the better of those through one fewer,
    its peak at least what that set keeps alive."""
    index = {q.id: i for i, q in enumerate(quanta)}
    parents = [{index[p] for p in q.inputs.values()} for q in quanta]
    readers: dict[str, set[int]] = {}
    for i, q in enumerate(quanta):
        for ds in q.inputs.values():
            readers.setdefault(ds, set()).add(i)

    def alive(ended: frozenset[int]) -> int:
        outputs = (ds for i in ended for ds in quanta[i].outputs.values())
        return sum(1 for ds in outputs if readers.get(ds) and not readers[ds] <= ended)

    best: dict[frozenset[int], int] = {frozenset(): 0}
    for size in range(1, len(quanta) + 1):
        for ended in map(frozenset, itertools.combinations(range(len(quanta)), size)):
            ways = [
                best[ended - {i}]
                for i in ended
                if parents[i] <= ended - {i} and ended - {i} in best
            ]
            if ways:
                best[ended] = max(min(ways), alive(ended))
    return best[frozenset(range(len(quanta)))]


@pytest.mark.parametrize("seed", range(6))
def test_the_floor_is_never_above_the_least_peak_of_any_order(seed: int) -> None:
    # Given small random graphs, whose least peak over every order is found exhaustively
    quanta = _random_graph(random.Random(seed), 11)
    least = _least_peak(quanta)
    # Then the floor bounds it from below and the reference order reaches at least it
    assert floor(quanta) <= least <= reference_peak(quanta)
