"""A run of the broker core in simulated time: workers run what they are sent one after
another (queued quanta start when the one ahead ends), each quantum takes the seconds and
memory a test gives it. Measures the makespan and the peak memory of the quanta running at
once, for planner and admission decisions on whole graphs (W5's shape: ``w5_graph``)."""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from broker.core.events import Dispatch, ResultReceived, WorkerHeard, WorkerJoined, WorkerReady
from common.graph import QuantumGraph
from tests.graphs import quantum
from tests.unit.harness import Harness, result

# W5 of the shared anchors: (MiB, seconds) per label; 20 visits x (8 small -> 1 medium), one
# large per 5 visits reading their mediums; 8 workers, a 1500 MiB budget
W5_KINDS = {"small": (64, 0.9), "medium": (384, 2.4), "large": (1000, 4.5)}
W5_LOWER_BOUND_S = 30.432  # max(critical path, memory x seconds / budget, seconds / workers)


def w5_graph(declared: bool = True, visits: int = 20, group: int = 5) -> QuantumGraph:
    """W5's shape; ``declared``: with its per-label ``resources`` block."""
    quanta = []
    for g in range(visits // group):
        mediums = []
        for v in range(g * group, (g + 1) * group):
            smalls = [f"s{v}.{k}" for k in range(8)]
            quanta += [quantum(s, label="small") for s in smalls]
            quanta.append(quantum(f"m{v}", label="medium", inputs=smalls))
            mediums.append(f"m{v}")
        quanta.append(quantum(f"l{g}", label="large", inputs=mediums))
    blocks = {label: {"memory": mb} for label, (mb, _) in W5_KINDS.items()}
    return QuantumGraph.from_quanta(quanta, resources=blocks if declared else None)


@dataclass
class Outcome:
    makespan: float
    peak_mb: float  # the most memory the quanta running at once used
    starts: dict[str, float]


def simulate(
    graph: QuantumGraph,
    workers: int,
    cost: Callable[[str], tuple[float, float]],
    **config: Any,
) -> Outcome:
    """Run ``graph`` on ``workers`` simulated workers; ``cost(label)``: (MiB, seconds)."""
    h = Harness(graph, workers=workers, **config)
    names = [f"w{n}".encode() for n in range(workers)]
    for n, w in enumerate(names):
        h.step(WorkerJoined(w, 100 + n, "host", 1, True))
    h.step(*(WorkerReady(w) for w in names))
    free_at = dict.fromkeys(names, 0.0)  # when each worker is done with what it was sent
    ends: list[tuple[float, int, Dispatch, float]] = []  # (end, serial, dispatch, start)
    serial = 0
    intervals: list[tuple[float, float, float]] = []  # (start, end, MiB)
    starts: dict[str, float] = {}

    def send(dispatches: list[Dispatch]) -> None:
        nonlocal serial
        for d in dispatches:
            label = graph.label_at(d.index)
            _, seconds = cost(label)
            start = max(h.now, free_at[d.worker])
            free_at[d.worker] = start + seconds
            heapq.heappush(ends, (start + seconds, serial, d, start))
            serial += 1

    send(h.sent)
    while not h.core.over and ends:
        end, _, d, start = heapq.heappop(ends)
        label = graph.label_at(d.index)
        mb, seconds = cost(label)
        starts[d.quantum_id] = start
        intervals.append((start, end, mb))
        before = len(h.sent)
        r = replace(result(d, duration_s=seconds), max_rss_kb=int(mb * 1024))
        h.step(ResultReceived(d.worker, r), *(WorkerHeard(w) for w in names), at=end)
        send(h.sent[before:])
    return Outcome(h.now, _peak(intervals), starts)


def _peak(intervals: list[tuple[float, float, float]]) -> float:
    """The most memory in use at once (an interval ends before one starting then begins)."""
    marks = sorted([(s, 1, mb) for s, _, mb in intervals] + [(e, 0, -mb) for _, e, mb in intervals])
    used = peak = 0.0
    for _, _, delta in marks:
        used += delta
        peak = max(peak, used)
    return peak
