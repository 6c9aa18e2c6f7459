"""The order quanta run in, simulated on the core: chains finish before new ones start,
the end of a run goes by critical path, and queueing ahead is judged by how often released
quanta outrank the queued one."""

from __future__ import annotations

import pytest

from broker.core.events import (
    Dispatch,
    ResultReceived,
    WorkerHeard,
)
from common.graph import QuantumGraph
from tests.graphs import independent, quantum
from tests.unit.harness import Harness, play, result

A, B, C = b"wa", b"wb", b"wc"


def _chains(n: int, length: int = 3) -> QuantumGraph:
    return QuantumGraph.from_quanta(
        [
            quantum(f"c{c}-{i}", label=f"step{i}", inputs=[f"c{c}-{i - 1}"] if i else [])
            for c in range(n)
            for i in range(length)
        ]
    )


def _run_to_end(h: Harness, worker: bytes) -> list[str]:
    """Answer every dispatch with a success, one at a time; the dispatch order."""
    order = []
    while not h.core.over:
        (d,) = h.dispatches(worker)
        order.append(d.quantum_id)
        # (its agent heartbeats meanwhile: a result proves only the executor child)
        h.step(ResultReceived(worker, result(d)), WorkerHeard(worker), at=h.now + 1)
    return order


def test_wide_graphs_finish_chains_before_starting_new_ones() -> None:
    # Given 8 independent chains of 3 and one worker (critical path is no constraint)
    h = Harness(_chains(8), workers=1)
    h.join(A)
    order = _run_to_end(h, A)
    # Then each chain runs start to end before the next begins (depth-first)
    chains = [qid.split("-")[0] for qid in order]
    assert all(len(set(chains[i : i + 3])) == 1 for i in range(0, len(order), 3))
    # and at most one intermediate is alive at a time (breadth-first would keep 8)
    assert h.core.report(None).figures["peakIntermediates"] == 1


def _pipeline(visits: int, group: int) -> QuantumGraph:
    """W3-shaped: per visit isr -> calibrate -> measure; a coadd per ``group`` visits' measures;
    a final quantum reading every coadd."""
    quanta = []
    for v in range(visits):
        quanta += [
            quantum(f"isr{v}", label="isr"),
            quantum(f"cal{v}", label="cal", inputs=[f"isr{v}"]),
            quantum(f"meas{v}", label="meas", inputs=[f"cal{v}"]),
        ]
    coadds = [f"coadd{c}" for c in range(visits // group)]
    for c, name in enumerate(coadds):
        members = [f"meas{v}" for v in range(c * group, (c + 1) * group)]
        quanta.append(quantum(name, label="coadd", inputs=members))
    quanta.append(quantum("final", label="final", inputs=coadds))
    return QuantumGraph.from_quanta(quanta)


def _simulate(
    h: Harness, workers: list[bytes], seconds: float = 1.0, coadd_s: float | None = None
) -> float:
    """Play ``workers`` (one slot each) in simulated time, every quantum taking ``seconds``
    (coadds ``coadd_s`` if given); the makespan."""

    def took(d: Dispatch) -> float:
        slow = coadd_s is not None and d.quantum_id.startswith("coadd")
        return coadd_s if slow and coadd_s is not None else seconds

    return play(h, workers, took)


def test_the_end_of_a_run_goes_by_critical_path_and_the_rest_depth_first() -> None:
    # Given a W3-shaped graph of 100 visits and 2 workers, 1 s per quantum
    graph = _pipeline(100, 10)
    h = Harness(graph, workers=2)
    makespan = _simulate(h, [A, B])
    # Then it ends as soon as two workers can: every pair of quanta side by side, the final one
    # alone (where children just released always went first, the last visit ran alone: +2 s)
    assert makespan == (len(graph) + 1) / 2
    # and the intermediates stay few: chains still finish before new ones start but in the
    # last few (critical-path order throughout keeps 100 alive, one per visit)
    assert h.core.report(None).figures["peakIntermediates"] <= 30


def test_a_label_not_seen_yet_does_not_end_depth_first_order_early() -> None:
    # Given the same graph of 1 ms quanta: the coadd and final labels are not learned until
    # late, and weighed at a 1 s guess they made the path look like most of the work left
    h = Harness(_pipeline(100, 10), workers=2)
    _simulate(h, [A, B], seconds=0.001)
    # Then chains still finish before new ones start until the last 48 quanta a worker (this
    # peaked at 100: breadth-first from 40% of the run on)
    assert h.core.report(None).figures["peakIntermediates"] <= 50


def test_slow_coadds_do_not_end_depth_first_order_early() -> None:
    # Given the same graph of 1 ms quanta whose coadds take 0.5 s: once one has run, the path
    # every visit leads to weighs much of the work left, where the order hardly matters
    h = Harness(_pipeline(100, 10), workers=2)
    _simulate(h, [A, B], seconds=0.001, coadd_s=0.5)
    # Then chains still finish before new ones start until the last 48 quanta a worker (this
    # peaked at 82 with the endgame begun by the time bound alone; breadth-first keeps 100)
    assert h.core.report(None).figures["peakIntermediates"] <= 50


def test_quanta_no_finished_parent_released_go_critical_path_first() -> None:
    # Given a chain of 6 beside 6 independent quanta, and two workers
    graph = QuantumGraph.from_quanta(
        [quantum(f"long{i}", label="long", inputs=[f"long{i - 1}"] if i else []) for i in range(6)]
        + [quantum(f"short{i}", label="short") for i in range(6)]
    )
    h = Harness(graph, workers=2)
    h.join(A)
    h.join(B)
    # Then the chain's head is among the first dispatched: it is as long as all the rest
    assert "long0" in {d.quantum_id for d in h.dispatches()}


def test_prefetching_is_judged_by_how_often_released_quanta_outrank_the_queued_one() -> None:
    # Given one worker holding two quanta: a chain (s0 -> s1 -> ...) beside independent ones
    spine = [quantum(f"s{i}", inputs=[f"s{i - 1}"] if i else []) for i in range(20)]
    side = [quantum(f"x{i}") for i in range(40)]
    h = Harness(QuantumGraph.from_quanta(spine + side), workers=1)
    h.join(A, slots=2)
    assert h.core.prefetch_cost_s() == 0.0
    # When each chain quantum finishes, the next one (a longer path below it than any other)
    # is released while an independent quantum queued on the worker runs first
    held = {d.quantum_id: d for d in h.dispatches(A)}
    for _ in range(17):  # (one release in eight is looked at: three are)
        for prefix in ("s", "x"):
            d = next(d for qid, d in held.items() if qid.startswith(prefix))
            h.step(ResultReceived(A, result(d, duration_s=0.5)), WorkerHeard(A), at=h.now + 1)
            del held[d.quantum_id]
            held.update({d.quantum_id: d for d in h.dispatches(A)})
    # Then queueing costs about the mean duration per completion (drivers stop queueing)
    assert h.core.prefetch_cost_s() == pytest.approx(0.5)
    assert h.core._samples == 3


def test_prefetching_costs_nothing_where_nothing_is_released() -> None:
    h = Harness(independent(20), workers=1)
    h.join(A, slots=2)
    for _ in range(10):
        d = h.dispatches()[0]
        h.step(ResultReceived(A, result(d)), at=h.now + 1)
    assert h.core.prefetch_cost_s() == 0.0
