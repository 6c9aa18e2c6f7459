"""The pure cores: graph state, scheduler and registry, driven with explicit values."""

from __future__ import annotations

import networkx as nx
import pytest

from broker.registry import InFlight, WorkerRegistry
from broker.scheduler import Scheduler
from broker.state import GraphState, QState


def _graph(edges: list[tuple[str, str]], nodes: list[str] = ()) -> nx.DiGraph[str]:  # type: ignore[assignment]
    g: nx.DiGraph[str] = nx.DiGraph()
    g.add_nodes_from(nodes)
    g.add_edges_from(edges)
    return g


def test_success_releases_children_when_all_parents_are_done() -> None:
    s = GraphState(_graph([("a", "c"), ("b", "c")]))
    assert sorted(s.initial_ready()) == ["a", "b"]
    s.start("a")
    assert s.succeed("a") == []
    s.start("b")
    assert s.succeed("b") == ["c"]
    assert s.state["c"] is QState.READY


def test_failure_skips_all_descendants_and_records_blockers() -> None:
    s = GraphState(_graph([("a", "b"), ("b", "c"), ("x", "c")]))
    s.initial_ready()
    s.start("a")
    s.start("x")
    assert sorted(s.fail("a")) == ["b", "c"]
    assert s.fail("x", timed_out=True) == []  # c already skipped, x also blocks it
    assert s.blocked_by["c"] == {"a", "x"}
    assert s.state["x"] is QState.TIMED_OUT
    assert s.finished


def test_requeue_and_cancel() -> None:
    s = GraphState(_graph([("a", "b")]))
    s.initial_ready()
    s.start("a")
    s.requeue("a")
    assert s.state["a"] is QState.READY
    assert sorted(s.cancel()) == ["a", "b"]
    assert s.finished and s.count(QState.CANCELLED) == 2
    with pytest.raises(ValueError, match="is cancelled, expected ready"):
        s.start("a")


def test_scheduler_prefers_the_longest_path_then_graph_order() -> None:
    # x -> y -> z is longer than a; b ties with a
    g = _graph([("x", "y"), ("y", "z")], nodes=["a", "b", "x"])
    sched = Scheduler(g, dict.fromkeys(g.nodes, "t"))
    for q in ("a", "b", "x"):
        sched.push(q)
    assert [sched.pop(), sched.pop(), sched.pop(), sched.pop()] == ["x", "a", "b", None]


def test_learned_durations_change_the_order() -> None:
    # long_task has no successors but is slow; chain c1 -> c2 is quick
    g = _graph([("c1", "c2")], nodes=["slow"])
    labels = {"slow": "heavy", "c1": "light", "c2": "light"}
    sched = Scheduler(g, labels)
    sched.learn("heavy", 5.0)
    sched.learn("light", 0.01)
    sched.push("c1")
    sched.push("slow")
    assert sched.pop() == "slow"
    assert sched.priority("c1") == pytest.approx(0.02)


def test_registry_tracks_silence_deadlines_and_fences_attempts() -> None:
    reg = WorkerRegistry()
    w = reg.add(b"id1", pid=10, host="h", slots=1, local=True, now=100.0)
    assert reg.next_free() is None  # not READY yet
    reg.mark_ready(w)
    assert reg.next_free() is w
    reg.assign(w, InFlight("q", attempt=2, sent_at=100.0, backstop=105.0))
    assert reg.next_free() is None
    assert reg.complete(w, "q", attempt=1) is None  # a superseded attempt
    assert reg.overdue(104.9) == [] and len(reg.overdue(105.0)) == 1
    assert reg.silent(103.0, limit_s=3.0) == [] and reg.silent(103.1, limit_s=3.0) == [w]
    assert reg.next_deadline(limit_s=3.0) == 103.0
    assert reg.complete(w, "q", attempt=2) is not None
    assert reg.next_free() is w
    reg.assign(w, InFlight("r", 1, 101.0, None))
    lost = reg.remove(w)
    assert [d.quantum_id for d in lost] == ["r"] and len(reg) == 0


def _lsst_like() -> tuple[nx.DiGraph[str], dict[str, str]]:
    """3 detectors x (isr -> cal), plus a 4-long chain 'deep'."""
    g = _graph(
        [(f"isr{d}", f"cal{d}") for d in range(3)]
        + [(f"deep{i}", f"deep{i + 1}") for i in range(3)]
    )
    labels = {q: q.rstrip("0123456789") for q in g}
    return g, labels


def test_scheduler_hands_out_a_chosen_quantum_once() -> None:
    g, labels = _lsst_like()
    s = Scheduler(g, labels)
    for q in ("isr0", "isr1", "deep0"):
        s.push(q)
    assert s.take("isr1") and not s.take("isr1") and not s.take("cal0")
    assert [s.pop(), s.pop(), s.pop()] == ["deep0", "isr0", None]
