"""Seeded graph shapes the order is held to, and what any order must keep alive on them.

``shapes()`` builds the set (LSST-shaped graphs with several detector counts and with many
visits per coadd, per-visit gathers only, deep chains, wide fan-ins); ``floor`` is a sound lower
bound on the peak number of intermediate datasets any order keeps alive, ``reference_peak``
the peak of a good one-worker order (what is achievable). Pure: no core, no clock.

The intermediate footprint (``broker.core.footprint``) depends only on which quanta have
ended: a dataset is alive once its producer has ended and until every reader has, and the peak
is read after each completion. So a run's peak is the largest ``alive(P)`` over the prefixes
``P`` of its order of completions, a topological order whatever the number of workers.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import networkx as nx

from common.graph import QuantumGraph
from common.quantum import Quantum
from tests.graphs import quantum

__all__ = ["Shape", "alive_peak", "floor", "reference_peak", "shapes"]


@dataclass(frozen=True, slots=True)
class Shape:
    """A graph, its name, and a duration per task label (seconds) to simulate it with."""

    name: str
    quanta: tuple[Quantum, ...]
    seconds: dict[str, float]

    @property
    def graph(self) -> QuantumGraph:
        return QuantumGraph.from_quanta(list(self.quanta))


class _Builder:
    """Quanta by id, each writing one dataset named after it."""

    def __init__(self) -> None:
        self.quanta: list[Quantum] = []

    def add(self, qid: str, label: str, inputs: Iterable[str] = ()) -> str:
        self.quanta.append(quantum(qid, label=label, inputs=list(inputs)))
        return qid

    def chain(self, prefix: str, labels: Sequence[str], inputs: Iterable[str] = ()) -> list[str]:
        """``labels`` one after another (the first reads ``inputs``); the ids, in order."""
        ids: list[str] = []
        for label in labels:
            ids.append(self.add(f"{label}-{prefix}", label, ids[-1:] if ids else inputs))
        return ids

    def shape(self, name: str, rng: random.Random) -> Shape:
        labels = sorted({q.task_label for q in self.quanta})
        seconds = {label: round(rng.uniform(0.5, 2.0), 2) for label in labels}
        return Shape(name, tuple(self.quanta), seconds)


_DETECTOR_CHAIN = ("isr", "calibrate", "measure")


def lsst(seed: int, visits: int, detectors: int, patches: int) -> Shape:
    """Per visit and detector isr -> calibrate -> measure; per visit a gather of its measures
    (the visit summary); per visit and patch a warp of the calexps of the detectors that
    overlap the patch (a contiguous run of detectors, neighbours overlapping by one) and the
    visit summary; per patch a coadd of the warps of every visit that overlaps it (most)."""
    rng = random.Random(seed)
    b = _Builder()
    cuts = sorted(rng.sample(range(1, detectors), patches - 1))
    bounds = list(zip([0, *cuts], [*cuts, detectors], strict=True))
    for v in range(visits):
        chains = [b.chain(f"v{v}-d{d}", _DETECTOR_CHAIN) for d in range(detectors)]
        summary = b.add(f"gather-v{v}", "gather", [c[-1] for c in chains])
        for p, (lo, hi) in enumerate(bounds):
            calexps = [chains[d][1] for d in range(max(0, lo - 1), min(detectors, hi + 1))]
            b.add(f"warp-v{v}-p{p}", "warp", [*calexps, summary])
    for p in range(patches):
        members = [v for v in range(visits) if rng.random() < 0.85] or [0]
        b.add(f"coadd-p{p}", "coadd", [f"warp-v{v}-p{p}" for v in members])
    return b.shape(f"lsst {visits}v x {detectors}d x {patches}p", rng)


def gathers(seed: int, visits: int, detectors: int) -> Shape:
    """Per visit and detector a chain of 2-4 steps (per visit the same), per visit a gather
    of the chains' ends; nothing reads the gathers."""
    rng = random.Random(seed)
    b = _Builder()
    for v in range(visits):
        steps = [f"step{s}" for s in range(rng.randint(2, 4))]
        ends = [b.chain(f"v{v}-d{d}", steps)[-1] for d in range(detectors)]
        b.add(f"gather-v{v}", "gather", ends)
    return b.shape(f"gathers {visits}v x {detectors}d", rng)


def chains(seed: int, count: int, length: int, group: int) -> Shape:
    """``count`` chains of ``length`` steps (a label per step), a gather per ``group``
    chains, and a final quantum over the gathers."""
    rng = random.Random(seed)
    b = _Builder()
    labels = [f"s{i}" for i in range(length)]
    ends = [b.chain(f"c{c}", labels)[-1] for c in range(count)]
    groups = [
        b.add(f"gather-g{g}", "gather", ends[g * group : (g + 1) * group])
        for g in range((count + group - 1) // group)
    ]
    b.add("final", "final", groups)
    return b.shape(f"chains {count} x {length}, gathers of {group}", rng)


def fanins(seed: int, width: int, fans: int) -> Shape:
    """``fans`` quanta each reading ``width`` branches (one or two steps from a source),
    where a quarter of the branches feed two fans; a final quantum over the fans."""
    rng = random.Random(seed)
    b = _Builder()
    readers: list[list[str]] = [[] for _ in range(fans)]
    for f in range(fans):
        for w in range(width):
            steps = ("src", "pre", "leaf") if rng.random() < 0.5 else ("src", "leaf")
            end = b.chain(f"f{f}-b{w}", steps)[-1]
            readers[f].append(end)
            if fans > 1 and rng.random() < 0.25:
                readers[(f + 1) % fans].append(end)
    names = [b.add(f"fan-{f}", "fan", readers[f]) for f in range(fans)]
    b.add("final", "final", names)
    return b.shape(f"fan-ins {fans} x {width}", rng)


def shapes() -> list[Shape]:
    """The shapes the order is held to (seeded: the same every time)."""
    return [
        lsst(1, visits=6, detectors=9, patches=3),
        lsst(2, visits=5, detectors=21, patches=4),
        lsst(3, visits=3, detectors=62, patches=6),
        lsst(4, visits=2, detectors=189, patches=8),  # (LSSTCam's science detectors)
        lsst(5, visits=40, detectors=4, patches=2),  # coadds over many visits
        gathers(6, visits=8, detectors=14),
        gathers(7, visits=3, detectors=60),
        chains(8, count=12, length=20, group=4),
        chains(9, count=30, length=6, group=10),
        fanins(10, width=60, fans=4),
        fanins(11, width=150, fans=1),
    ]


# ---------------------------------------------------------------- what any order keeps alive
class _Flow:
    """Producers and readers of every intermediate dataset, parents and children of every
    quantum, by index."""

    def __init__(self, quanta: Sequence[Quantum]) -> None:
        self.n = len(quanta)
        producer = {ds: i for i, q in enumerate(quanta) for ds in q.outputs.values()}
        readers: dict[str, list[int]] = {}
        for i, q in enumerate(quanta):
            for ds in set(q.inputs.values()):
                if ds in producer:
                    readers.setdefault(ds, []).append(i)
        self.datasets = [(producer[ds], rs) for ds, rs in readers.items()]
        self.parents: list[set[int]] = [set() for _ in quanta]
        self.children: list[set[int]] = [set() for _ in quanta]
        for p, rs in self.datasets:
            for r in rs:
                self.parents[r].add(p)
                self.children[p].add(r)
        self.labels = [q.task_label for q in quanta]

    def closure(self, start: Iterable[int], step: Callable[[int], set[int]]) -> set[int]:
        seen: set[int] = set()
        todo = list(start)
        while todo:
            i = todo.pop()
            for j in step(i):
                if j not in seen:
                    seen.add(j)
                    todo.append(j)
        return seen

    def cut(self, before: set[int], after: set[int]) -> int:
        """The fewest datasets alive over every set ``P`` of ended quanta closed under
        parents with ``before <= P`` and no quantum of ``after`` in it: a minimum s-t cut
        (source side: ended; a dataset costs one where its producer is on the source side and
        a reader is not)."""
        g: nx.DiGraph[object] = nx.DiGraph()
        g.add_nodes_from(("s", "t"))
        fixed = 0
        for k, (p, rs) in enumerate(self.datasets):
            if p in after or all(r in before for r in rs):
                continue
            if p in before and any(r in after for r in rs):
                fixed += 1
                continue
            ds = ("d", k)
            g.add_edge("s" if p in before else p, ds, capacity=1)
            for r in rs:
                if r not in before:
                    g.add_edge(ds, "t" if r in after else r)  # (no capacity: infinite)
        for i in g.nodes:
            if isinstance(i, int):
                for p in self.parents[i]:
                    if p not in before:
                        g.add_edge(i, p)  # ended only after its parents
        return fixed + int(nx.minimum_cut_value(g, "s", "t"))


def floor(quanta: Sequence[Quantum]) -> int:
    """A lower bound on the peak any order keeps alive.

    Every order passes, for any set ``R`` of quanta, the moment just before the first of
    ``R`` ends and the moment just before the last of them does. Before the first one ends,
    the common ancestors of ``R`` have ended and nothing of ``R`` or below it has; before the
    last one, ``r``, ends, the rest of ``R`` and every ancestor of ``R`` have ended and
    nothing of ``r`` or below it has (the least over each choice of ``r``). Whatever else
    has ended, some datasets are alive then: those of an ended producer with a reader not
    ended (a gather's inputs; for each branch the order has not folded into its reader yet,
    either the branch's input or its output). The fewest over every choice of the rest is a
    minimum cut (``_Flow.cut``), so each bounds the peak from below. The floor is the
    largest over ``R`` = each task label's quanta (first and, where some of them read two
    parents or more, last) and each of the three quanta of such a label that read the most,
    alone (first). Checked against the exact least peak of small random graphs in
    ``tests/unit/test_shapes.py``."""
    flow = _Flow(quanta)
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(flow.labels):
        by_label.setdefault(label, []).append(i)

    @functools.cache
    def ancestors(i: int) -> frozenset[int]:
        return frozenset(flow.closure([i], flow.parents.__getitem__))

    @functools.cache
    def below(i: int) -> frozenset[int]:
        return frozenset(flow.closure([i], flow.children.__getitem__)) | {i}

    best = 0
    for members in by_label.values():
        common = set(ancestors(members[0]))
        for i in members[1:]:
            common &= ancestors(i)
            if not common:
                break
        after = flow.closure(members, flow.children.__getitem__) | set(members)
        best = max(best, flow.cut(common, after))
        if max(len(flow.parents[i]) for i in members) < 2:
            continue  # (chains: what they keep alive shows where they are read)
        for i in sorted(members, key=lambda i: -len(flow.parents[i]))[:3]:
            best = max(best, flow.cut(set(ancestors(i)), set(below(i))))
        ended = set(members).union(*(ancestors(i) for i in members))
        last = len(flow.datasets)
        for r in members:
            last = min(last, flow.cut(ended - below(r), set(below(r))))
            if last <= best:
                break  # (the least over ``r`` cannot raise the floor any more)
        best = max(best, last)
    return best


def alive_peak(quanta: Sequence[Quantum], order: Sequence[int]) -> int:
    """The peak ``broker.core.footprint`` reports for quanta ending in ``order``."""
    flow = _Flow(quanta)
    left: dict[int, int] = {}
    outputs: dict[int, list[int]] = {}
    inputs: dict[int, list[int]] = {}
    for k, (p, rs) in enumerate(flow.datasets):
        outputs.setdefault(p, []).append(k)
        for r in rs:
            inputs.setdefault(r, []).append(k)
    alive = peak = 0
    for i in order:
        for k in inputs.get(i, ()):
            left[k] -= 1
            alive -= left[k] == 0
        for k in outputs.get(i, ()):
            left[k] = len(flow.datasets[k][1])
            alive += 1
        peak = max(peak, alive)
    return peak


def reference_peak(quanta: Sequence[Quantum]) -> int:
    """The peak of a good one-worker order: the better of depth first from each sink in turn
    and a greedy order (``_greedy``)."""
    return min(alive_peak(quanta, _depth_first(quanta)), alive_peak(quanta, _greedy(quanta)))


def _depth_first(quanta: Sequence[Quantum]) -> list[int]:
    """Each sink in graph order, its ancestors first (parents in graph order, each one's own
    ancestors before it)."""
    flow = _Flow(quanta)
    done = [False] * flow.n
    order: list[int] = []
    for sink in (i for i in range(flow.n) if not flow.children[i]):
        stack = [(sink, iter(sorted(flow.parents[sink])))]
        while stack:
            i, parents = stack[-1]
            nxt = next((p for p in parents if not done[p]), None)
            if nxt is None:
                stack.pop()
                if not done[i]:
                    done[i] = True
                    order.append(i)
            else:
                stack.append((nxt, iter(sorted(flow.parents[nxt]))))
    return order


def _greedy(quanta: Sequence[Quantum]) -> list[int]:
    """Run next the ready quantum that leaves the fewest datasets alive (of equals, the one
    made ready last, then graph order)."""
    flow = _Flow(quanta)
    outputs: dict[int, list[int]] = {}
    inputs: dict[int, list[int]] = {}
    for k, (p, rs) in enumerate(flow.datasets):
        outputs.setdefault(p, []).append(k)
        for r in rs:
            inputs.setdefault(r, []).append(k)
    left = {k: len(rs) for k, (_, rs) in enumerate(flow.datasets)}
    waiting = [len(flow.parents[i]) for i in range(flow.n)]
    ready = {i: 0 for i in range(flow.n) if not waiting[i]}
    order: list[int] = []
    for tick in range(1, flow.n + 1):
        i = min(
            ready,
            key=lambda i: (
                len(outputs.get(i, ())) - sum(left[k] == 1 for k in inputs.get(i, ())),
                -ready[i],
                i,
            ),
        )
        del ready[i]
        order.append(i)
        for k in inputs.get(i, ()):
            left[k] -= 1
        for c in flow.children[i]:
            waiting[c] -= 1
            if not waiting[c]:
                ready[c] = tick
    return order
