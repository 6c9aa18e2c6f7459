"""The pure cores: graph state, scheduler and registry, driven with explicit values."""

from __future__ import annotations

import random
from array import array
from collections.abc import Iterable, Sequence

import pytest

from broker.core.registry import InFlight, WorkerRegistry
from broker.core.scheduler import Scheduler, _tree_order
from broker.core.state import GraphState, QState
from common.topology import Topology


class Named:
    """A small graph by quantum name, over the index-based cores."""

    def __init__(
        self, edges: list[tuple[str, str]], nodes: Sequence[str] = (), labels: Sequence[str] = ()
    ) -> None:
        self.names = list(dict.fromkeys([*nodes, *(x for e in edges for x in e)]))
        self._index = {n: i for i, n in enumerate(self.names)}
        src = [self._index[a] for a, _ in edges]
        dst = [self._index[b] for _, b in edges]
        self.topology = Topology.from_edges(len(self.names), src, dst)
        self.label_names = sorted(set(labels)) or ["t"]
        by_name = dict(zip(self.names, labels, strict=False))
        self.labels = array(
            "I", [self.label_names.index(by_name.get(n, self.label_names[0])) for n in self.names]
        )

    def i(self, name: str) -> int:
        return self._index[name]

    def n(self, index: int | None) -> str | None:
        return None if index is None else self.names[index]

    def ns(self, indices: Iterable[int]) -> list[str]:
        return sorted(self.names[i] for i in indices)

    def state(self) -> GraphState:
        return GraphState(self.topology, self.labels, self.label_names)

    def scheduler(self) -> Scheduler:
        return Scheduler(self.topology, self.labels, len(self.label_names))


def test_success_releases_children_when_all_parents_are_done() -> None:
    g = Named([("a", "c"), ("b", "c")])
    s = g.state()
    assert g.ns(s.initial_ready()) == ["a", "b"]
    s.start(g.i("a"))
    assert s.succeed(g.i("a")) == []
    s.start(g.i("b"))
    assert g.ns(s.succeed(g.i("b"))) == ["c"]
    assert s.state(g.i("c")) is QState.READY


def test_failure_skips_all_descendants_and_records_blockers() -> None:
    g = Named([("a", "b"), ("b", "c"), ("x", "c")])
    s = g.state()
    s.initial_ready()
    s.start(g.i("a"))
    s.start(g.i("x"))
    assert g.ns(s.fail(g.i("a"))) == ["b", "c"]
    assert s.fail(g.i("x"), timed_out=True) == []  # c already skipped, x also blocks it
    assert g.ns(s.blocked_by[g.i("c")]) == ["a", "x"]
    assert s.state(g.i("x")) is QState.TIMED_OUT
    assert s.finished


def test_requeue_and_cancel() -> None:
    g = Named([("a", "b")])
    s = g.state()
    s.initial_ready()
    s.start(g.i("a"))
    s.requeue(g.i("a"))
    assert s.state(g.i("a")) is QState.READY
    assert g.ns(s.cancel()) == ["a", "b"]
    assert s.finished and s.count(QState.CANCELLED) == 2
    with pytest.raises(ValueError, match="is cancelled, expected ready"):
        s.start(g.i("a"))


def test_counts_per_label_follow_every_transition() -> None:
    g = Named([("a", "b")], labels=["A", "B"])
    s = g.state()
    assert s.label_counts() == {"A": {QState.PENDING: 1}, "B": {QState.PENDING: 1}}
    s.initial_ready()
    s.start(g.i("a"))
    s.succeed(g.i("a"))
    assert s.label_counts() == {"A": {QState.SUCCEEDED: 1}, "B": {QState.READY: 1}}


def test_scheduler_prefers_the_longest_path_then_graph_order() -> None:
    # x -> y -> z is longer than a; b ties with a
    g = Named([("x", "y"), ("y", "z")], nodes=["a", "b", "x"])
    sched = g.scheduler()
    for q in ("a", "b", "x"):
        sched.push(g.i(q))
    assert [g.n(sched.pop()) for _ in range(4)] == ["x", "a", "b", None]


def test_learned_durations_change_the_order() -> None:
    # slow has no successors but is slow; chain c1 -> c2 is quick
    g = Named([("c1", "c2")], nodes=["slow"], labels=["heavy", "light", "light"])
    sched = g.scheduler()
    heavy, light = g.label_names.index("heavy"), g.label_names.index("light")
    sched.learn(heavy, 5.0)
    sched.learn(light, 0.01)
    sched.push(g.i("c1"))
    sched.push(g.i("slow"))
    assert g.n(sched.pop(2)) == "slow"
    assert sched.priority(g.i("c1")) == pytest.approx(0.02)


def test_spread_is_how_far_durations_stray_from_their_labels_means() -> None:
    g = Named([("a", "b")], nodes=["c", "d"], labels=["x", "x", "y", "y"])
    sched = g.scheduler()
    x, y = g.label_names.index("x"), g.label_names.index("y")
    assert sched.spread() is None  # nothing learned
    # Labels of different means, each quantum at its label's mean: no spread
    for label, d in ((x, 1.0), (x, 1.0), (y, 3.0), (y, 3.0)):
        sched.learn(label, d)
    assert sched.spread() == pytest.approx(0.0)
    # One long among short ones of the same label: the pooled deviation against the mean
    sched = g.scheduler()
    for d in (0.001, 0.001, 0.001, 0.045):
        sched.learn(x, d)
    assert sched.spread() == pytest.approx(0.019053 / 0.012, rel=1e-3)


def test_bottom_levels_take_the_heaviest_branch_below() -> None:
    # a -> b -> d and a -> c: a weighs its own 1 + b's 1 + d's 1
    g = Named([("a", "b"), ("b", "d"), ("a", "c")])
    sched = g.scheduler()
    assert [sched.priority(g.i(q)) for q in "abcd"] == [3.0, 2.0, 1.0, 1.0]


def test_registry_tracks_silence_deadlines_and_fences_attempts() -> None:
    reg = WorkerRegistry()
    w = reg.add(b"id1", pid=10, host="h", slots=1, local=True, now=100.0)
    assert reg.next_free() is None  # not READY yet
    reg.mark_ready(w, 100.0)
    assert reg.next_free() is w
    reg.assign(w, InFlight("q", attempt=2, sent_at=100.0, backstop=105.0, index=0))
    assert reg.next_free() is None
    assert reg.complete(w, "q", attempt=1) is None  # a superseded attempt
    assert reg.overdue(104.9) == [] and len(reg.overdue(105.0)) == 1
    assert reg.silent(103.0, limit_s=3.0) == [] and reg.silent(103.1, limit_s=3.0) == [w]
    assert reg.next_deadline(limit_s=3.0) == 103.0
    assert reg.complete(w, "q", attempt=2) is not None
    assert reg.next_free() is w
    reg.assign(w, InFlight("r", 1, 101.0, None, 1))
    lost = reg.remove(w)
    assert [d.quantum_id for d in lost] == ["r"] and len(reg) == 0


def _lsst_like() -> Named:
    """3 detectors x (isr -> cal), plus a 4-long chain 'deep'."""
    edges = [(f"isr{d}", f"cal{d}") for d in range(3)]
    edges += [(f"deep{i}", f"deep{i + 1}") for i in range(3)]
    names = list(dict.fromkeys(x for e in edges for x in e))
    return Named(edges, labels=[q.rstrip("0123456789") for q in names])


def test_scheduler_hands_out_a_chosen_quantum_once() -> None:
    g = _lsst_like()
    s = g.scheduler()
    for q in ("isr0", "isr1", "deep0"):
        s.push(g.i(q))
    assert s.take(g.i("isr1")) and not s.take(g.i("isr1")) and not s.take(g.i("cal0"))
    assert [g.n(s.pop()) for _ in range(3)] == ["deep0", "isr0", None]


def test_a_released_quantum_taken_at_once_never_enters_the_heap() -> None:
    g = _lsst_like()
    s = g.scheduler()
    s.push(g.i("isr0"))
    s.release(g.i("cal1"))
    assert len(s) == 2 and s.take(g.i("cal1")) and len(s) == 1
    s.release(g.i("cal2"))  # not taken: popped in its turn, before a source (one worker)
    s.learn(0, 1.0)
    assert [g.n(s.pop()) for _ in range(3)] == ["cal2", "isr0", None]
    assert s._heap == []


def test_quanta_that_read_what_others_wrote_go_before_sources() -> None:
    # Given two visits of 10 detectors (isr -> cal), a gather per visit and a final one, with
    # durations learned: 1 s each
    edges = [(f"isr{v}{d}", f"cal{v}{d}") for v in range(2) for d in range(10)]
    edges += [(f"cal{v}{d}", f"gather{v}") for v in range(2) for d in range(10)]
    edges += [(f"gather{v}", "final") for v in range(2)]
    g = Named(edges)
    s = g.scheduler()
    s.learn(0, 1.0)
    for v, d in [(1, 0), (0, 0), (1, 1), (0, 1)]:
        s.push(g.i(f"isr{v}{d}"))
    # When a calibration is ready that was released and not taken at once
    s.release(g.i("cal02"))
    # Then it goes first although every isr outranks it (on 2 workers, 43 s of work left and
    # paths of 4 s: nothing can lengthen the run by waiting), then the sources in tree order:
    # the first gather's before the second's, whatever order they became ready in
    assert [g.n(s.pop(2)) for _ in range(5)] == ["cal02", "isr00", "isr01", "isr10", "isr11"]


def test_sources_go_by_critical_path_where_waiting_could_lengthen_the_run() -> None:
    # Given a chain of 6 s and 2 independent 1 s quanta ahead of it in tree order, learned
    g = Named([(f"long{i}", f"long{i + 1}") for i in range(5)], nodes=["x0", "x1"])
    s = g.scheduler()
    s.learn(0, 1.0)
    for q in ("x0", "x1", "long0"):
        s.push(g.i(q))
    # Then on 2 workers the chain's head goes first (6 s of a path against 8 s of work)
    assert g.n(s.pop(2)) == "long0"
    # and on one worker, where no order ends sooner, the tree order decides
    s.push(g.i("long0"))
    assert g.n(s.pop(1)) == "x0"


def test_a_source_that_cannot_wait_goes_before_begun_quanta() -> None:
    # Given a begun chain (b1 ready) beside a 6 s chain not begun, all 1 s quanta
    edges = [("b0", "b1")] + [(f"long{i}", f"long{i + 1}") for i in range(5)]
    g = Named(edges)
    s = g.scheduler()
    s.learn(0, 1.0)
    s.ended(g.i("b0"))
    s.push(g.i("long0"))
    s.release(g.i("b1"))
    # Then the long chain's head goes first: after b1 its 6 s would not fit in the 6 s of
    # work left per worker of 2 (less an eighth)
    assert g.n(s.pop(2)) == "long0"


def test_tree_order_walks_each_sink_depth_first() -> None:
    # Given two gathers of two chains each, the second gather's chains first in the graph
    edges = [("a1", "a2"), ("b1", "b2"), ("c1", "c2"), ("d1", "d2")]
    edges += [("a2", "g2"), ("b2", "g2"), ("c2", "g1"), ("d2", "g1"), ("g1", "f"), ("g2", "f")]
    g = Named(edges, nodes=["a1", "b1", "c1", "d1"])
    place = _tree_order(g.topology)
    walk = sorted(g.names, key=lambda n: place[g.i(n)])
    # Then the walk starts at the sink and goes down each gather's chains before the next
    assert walk == ["f", "g2", "a2", "a1", "b2", "b1", "g1", "c2", "c1", "d2", "d1"]


def test_the_endgame_begins_when_the_critical_path_weighs_against_the_work_left() -> None:
    # Given a chain a -> b -> c of 1 s quanta beside 40 independent 1 s ones
    g = Named([("a", "b"), ("b", "c")], nodes=[f"x{i}" for i in range(40)])
    s = g.scheduler()
    s.learn(0, 1.0)
    s.push(g.i("a"))
    # Then with 43 s of work left a 3 s path costs little on 2 workers; on 1 never anything
    assert not s.endgame(2, 43) and not s.endgame(1, 43)
    # And once most of the work has ended (here: resumed as done) the path decides
    s.resumed([g.i(f"x{i}") for i in range(30)])
    assert s.endgame(2, 13) and not s.endgame(1, 13)
    # and every end counts, learned estimates too: 12 quanta left, now of 2 s each
    s.ended(g.i("x30"))
    s.learn(0, 3.0)
    assert s.work_left_s == pytest.approx(12 * 2.0)


def test_bottom_levels_match_the_recurrence_on_a_random_graph() -> None:
    rng = random.Random(7)
    n = 300
    edges = {(a, b) for b in range(1, n) for a in rng.sample(range(b), min(b, rng.randint(0, 3)))}
    names = [f"q{i}" for i in range(n)]
    g = Named([(names[a], names[b]) for a, b in sorted(edges)], nodes=names)
    sched = g.scheduler()
    sched.learn(0, 2.0)  # one label: every quantum weighs 2 s
    sched.push(0)
    sched.pop()  # a re-rank happens on the next decision
    expected: dict[int, float] = {}
    for i in reversed(range(n)):
        below = [expected[b] for a, b in edges if a == i]
        expected[i] = 2.0 + max(below, default=0.0)
    assert [sched.priority(g.i(f"q{i}")) for i in range(n)] == [expected[i] for i in range(n)]


def test_re_ranking_a_big_graph_is_paced_by_the_results_that_pay_for_it() -> None:
    # Given 12,288 independent quanta of two labels (a re-rank is paid for by 4 results)
    names = [f"a{i}" for i in range(6144)] + [f"b{i}" for i in range(6144)]
    g = Named([], nodes=names, labels=[n[0] for n in names])
    s = g.scheduler()
    a = g.label_names.index("a")
    # When label a turns out to take 2 s (1 s assumed), the ranks follow after 4 results
    for _ in range(3):
        s.learn(a, 2.0)
        assert s.top_priority() is None and s.priority(g.i("a0")) == 1.0  # not yet
    s.learn(a, 2.0)
    s.top_priority()
    # (b, not seen yet, ranks as if long; in the work left it weighs what those seen weigh)
    assert s.priority(g.i("a0")) == 2.0 and s.priority(g.i("b0")) == 1.0
    assert s.work_left_s == pytest.approx(12_288 * 2.0)
