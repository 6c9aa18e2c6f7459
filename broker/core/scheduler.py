"""Scheduling policy: which ready quantum runs next. Longest remaining path to a sink first
(critical path), weighted by durations learned per task label; ties by graph order. Where
the order cannot lengthen the run (Graham), what is begun finishes first: quanta that read
what others wrote go before sources, and sources go in a depth-first order from the sinks,
so intermediates stay near what the graph itself needs alive (``pop``). The driver may
``take`` a particular ready quantum instead (a child its parent just released: chains
continue where they ran) until the ``endgame``, where the order of what is ready can still
lengthen the run.

Pure: no clock, sockets or processes; durations come in as plain numbers. Quanta are graph
indices; ranks are computed a depth level at a time with numpy, so re-ranking a million
quanta costs a fraction of a second.
"""

from __future__ import annotations

import heapq
import math
from array import array

import numpy as np
import numpy.typing as npt

from common.topology import Topology, as_numpy

CHAIN_TIER = 1e9  # seconds: rank tiers above any critical path (``weigh``)

__all__ = ["Scheduler"]

_DEFAULT_ESTIMATE_S = 1.0  # before anything is learned, every quantum weighs the same
# Re-rank when a label's estimate moved this much and by at least this many seconds (a
# re-rank costs the broker 0.1-0.4 ms even on a 300-quantum graph; in a simulation of the core
# over eight seeds of W4-like graphs, 0.5 and 5 ms order as well as 0.25 and 1 ms did, with
# ~45 re-ranks a run instead of ~79) ...
_RELATIVE_CHANGE = 0.5
_ABSOLUTE_CHANGE_S = 0.005
# ... but no sooner than after this many results per edge and quantum since the last re-rank:
# a re-rank walks the whole graph (~20 ms a million quanta), so on a big graph its cost is
# spread over the results that led to it; on a small one it follows every move (stale
# priorities cost a W4-like graph more than its re-ranks do)
_RESULTS_PER_RERANK_ITEM = 1 / 4096
# How much more the remaining work per worker must be than what the order can still cost
# for the order to be left to other concerns (``endgame``) ...
_ENDGAME_SLACK = 8
# ... and how many unfinished quanta per worker there may be left at most: a path all the
# rest leads to (slow coadds, a long final quantum) makes that bound look close from the
# start, where the order hardly matters and critical-path order would open every chain at
# once. (48: over W3 variants of 90-110 visits in a simulation of the core, the best mean
# of the caps tried from 32 to 128, and as good as none.)
_ENDGAME_QUANTA_PER_WORKER = 48
# Within the last this many unfinished quanta a worker, a source whose path could lengthen the
# run goes by critical path before quanta begun (``_urgent``): how the last few quanta pack
# onto the workers decides the end there, which the time bound alone does not see. (16: the
# fewest with which a W3-shaped graph of 1 s quanta ends as soon as two workers can.)
_FINAL_QUANTA_PER_WORKER = 16


class Scheduler:
    """A priority queue of ready quanta keyed by (critical path, index)."""

    def __init__(self, topology: Topology, labels: array[int], label_count: int) -> None:
        self._labels = labels  # label number per quantum
        self._estimates: list[float | None] = [None] * label_count
        self._sums = [(0.0, 0)] * label_count
        self._squares = [0.0] * label_count  # durations squared, summed per label (``spread``)
        # In the work left, a label not learned yet weighs the mean of those learned
        self._learned_sum, self._learned_count = 0.0, 0
        self._ranked_with: list[float] = [_DEFAULT_ESTIMATE_S] * label_count
        self._dirty = False
        self._since_rank = 0  # durations learned since the last re-rank
        self._rank_every = 1 + int((topology.size + topology.edge_count) * _RESULTS_PER_RERANK_ITEM)
        self._priority: array[float] = array("d")
        # Ready quanta with parents by critical path (then graph order); sources (no parents)
        # so too and by their place in the tree order (``_tree_order``)
        self._heap: list[tuple[float, int]] = []
        self._fresh: list[tuple[float, int]] = []
        self._fresh_order: list[tuple[int, int]] = []
        self._agree = False  # sources in critical-path order are in tree order (``_rank``)
        self._staged: list[int] = []  # released, not yet in the heap (``release``)
        self._order = _tree_order(topology)
        parents = np.bincount(as_numpy(topology.succ), minlength=topology.size)
        self._source = (parents == 0).astype(np.uint8).tobytes()
        self._queued = bytearray(topology.size)
        self._queued_count = 0
        self._plan = _plan(topology)
        self._extra: npt.NDArray[np.float64] | None = None  # per quantum, on top of its label
        # Unfinished quanta per label; the work of those of learned labels, and how many of the
        # others are left (``work_left_s``: constant time per result).
        per_label = np.bincount(as_numpy(labels), minlength=label_count) if len(labels) else None
        self._unfinished: list[int] = [0] * label_count if per_label is None else per_label.tolist()
        self._learned_left_s = 0.0
        self._unlearned_left = len(labels)
        self._left = len(labels)  # quanta not ended
        self._rank()

    def estimate(self, label: int) -> float:
        est = self._estimates[label]
        return self._guess() if est is None else est

    def _weight(self, label: int) -> float:
        """What a label weighs in the ranks: a task not seen yet ranks as if long, so paths
        through unseen tasks go first (and their durations are learned early)."""
        est = self._estimates[label]
        return _DEFAULT_ESTIMATE_S if est is None else est

    def _guess(self) -> float:
        """What a label not learned yet weighs: the mean of the labels learned."""
        n = self._learned_count
        return self._learned_sum / n if n else _DEFAULT_ESTIMATE_S

    def observed_s(self) -> float:
        """The durations learned so far, summed."""
        return sum(total for total, _ in self._sums)

    def mean_duration_s(self) -> float | None:
        """The mean of every duration learned so far (None before the first)."""
        n = sum(count for _, count in self._sums)
        return self.observed_s() / n if n else None

    def spread(self) -> float | None:
        """How far durations stray from their label's mean: the deviation from it pooled over
        the labels, against the mean of all (None before anything is learned). The ranks are
        built from label means; where this is large they cannot tell which quanta are long."""
        count, total, within = 0, 0.0, 0.0
        for (s, n), squares in zip(self._sums, self._squares, strict=True):
            if n:
                count, total, within = count + n, total + s, within + squares - s * s / n
        if not count or total <= 0.0:
            return None
        return math.sqrt(max(0.0, within) / count) / (total / count)

    def priority(self, i: int) -> float:
        return self._priority[i]

    def _rank(self) -> None:
        """Bottom levels: own estimate plus the heaviest path below."""
        weights = np.array([self._weight(n) for n in range(len(self._estimates))])
        own = weights[as_numpy(self._labels)] if len(self._labels) else np.zeros(0)
        if self._extra is not None:
            own = own + self._extra
        self._priority = array("d", _bottom_levels(self._plan, own).tobytes())
        self._ranked_with = [self._weight(n) for n in range(len(self._estimates))]
        self._dirty = False
        self._since_rank = 0
        prio = self._priority
        queued = np.flatnonzero(np.frombuffer(self._queued, np.uint8)).tolist()
        order, source = self._order, self._source
        self._agree = _orders_agree(self._priority, order, source)
        self._heap = [(-prio[i], i) for i in queued if not source[i]]
        self._fresh = [(-prio[i], i) for i in queued if source[i]]
        self._fresh_order = [] if self._agree else [(order[i], i) for i in queued if source[i]]
        heapq.heapify(self._heap)
        heapq.heapify(self._fresh)
        heapq.heapify(self._fresh_order)
        self._staged.clear()

    def weigh(self, extra: dict[int, float]) -> None:
        """Rank these quanta (and so what leads to them) this much higher: multiples of
        ``CHAIN_TIER`` (``Admission.chain``); re-ranks now."""
        if not extra and self._extra is None:
            return
        self._extra = np.zeros(len(self._labels)) if extra else None
        if self._extra is not None:
            self._extra[np.fromiter(extra.keys(), np.int64)] = np.fromiter(extra.values(), float)
        self._rank()

    def learn(self, label: int, duration_s: float) -> None:
        """Fold in one observed duration (mean per label)."""
        total, n = self._sums[label]
        total, n = total + duration_s, n + 1
        self._sums[label] = (total, n)
        self._squares[label] += duration_s * duration_s
        new = total / n
        self._since_rank += 1
        est = self._estimates[label]
        if est is None:
            self._learned_count += 1
            self._unlearned_left -= self._unfinished[label]
            est = 0.0
        else:
            self._learned_left_s -= self._unfinished[label] * est
        self._learned_sum += new - est
        self._learned_left_s += self._unfinished[label] * new
        self._estimates[label] = new
        if _moved(self._ranked_with[label], new):
            self._dirty = True

    @property
    def work_left_s(self) -> float:
        """The estimated durations of the quanta that have not ended, summed."""
        return max(0.0, self._learned_left_s) + self._unlearned_left * self._guess()

    def ended(self, i: int) -> None:
        """``i`` ended (however): its work no longer remains."""
        self._forget(self._labels[i], 1)

    def _forget(self, label: int, count: int) -> None:
        """``count`` quanta of ``label`` ended: out of the unfinished and the work left."""
        self._unfinished[label] -= count
        self._left -= count
        est = self._estimates[label]
        if est is None:
            self._unlearned_left -= count
        else:
            self._learned_left_s -= count * est

    def resumed(self, done: list[int]) -> None:
        """``done`` ended in an earlier run."""
        if not done:
            return
        labels = as_numpy(self._labels)[np.asarray(done, dtype=np.int64)]
        for label, count in enumerate(np.bincount(labels, minlength=len(self._unfinished))):
            self._forget(label, int(count))

    def endgame(self, workers: int, unfinished: int) -> bool:
        """Whether the order of what is ready can still lengthen the run noticeably: a list
        schedule ends at most (remaining critical path) x (1 - 1/workers) after the remaining
        work spread over the workers (Graham), so while that is a small fraction of the work
        left, any order finishes about as soon and other concerns may choose; near the end
        (the last ``_ENDGAME_QUANTA_PER_WORKER`` quanta a worker at most, of ``unfinished``),
        the critical path must go first."""
        if unfinished > _ENDGAME_QUANTA_PER_WORKER * workers:
            return False
        top = self.top_priority()
        return top is not None and self._critical(top, workers)

    def push(self, i: int) -> None:
        if self._queued[i]:
            return
        self._queued[i] = 1
        self._queued_count += 1
        entry = (-self._priority[i], i)
        if self._source[i]:
            heapq.heappush(self._fresh, entry)
            if not self._agree:
                heapq.heappush(self._fresh_order, (self._order[i], i))
        else:
            heapq.heappush(self._heap, entry)

    def release(self, i: int) -> None:
        """Like ``push``, for a child its parent just made ready: the driver usually ``take``s
        it at once, so it enters the heap only when something is popped. (Heap entries of
        taken quanta would stay until popped: tens of MB over a million quanta.)"""
        if self._queued[i]:
            return
        self._queued[i] = 1
        self._queued_count += 1
        self._staged.append(i)

    def _unstage(self) -> None:
        prio = self._priority
        for i in self._staged:
            if self._queued[i]:
                heapq.heappush(self._heap, (-prio[i], i))
        self._staged.clear()

    def _head(self, heap: list[tuple[float, int]]) -> int | None:
        """The first quantum of ``heap`` still ready (entries of those taken go)."""
        queued = self._queued
        while heap and not queued[heap[0][1]]:
            heapq.heappop(heap)
        return heap[0][1] if heap else None

    def top_priority(self) -> float | None:
        """The priority of the most critical quantum ready (None when nothing is ready)."""
        if self._dirty and self._since_rank >= self._rank_every:
            self._rank()
        prio = self._priority
        tops = [self._head(self._heap), self._head(self._fresh)]
        tops += [i for i in self._staged if self._queued[i]]
        return max((prio[i] for i in tops if i is not None), default=None)

    def pop(self, workers: int = 1) -> int | None:
        """The quantum to run next. First the most critical one that reads what others wrote
        (chains and gathers begun finish before new ones start, so intermediates are read
        soon after they are written), unless a source outranks it that cannot wait behind it
        (``_urgent``). Then sources: the most critical first where its path could lengthen
        the run (``_critical``), else the first in tree order (``_tree_order``: what one sink
        needs before what the next one does). The order hardly changes when the run ends
        while every path that waits is short against the work left per worker (Graham)."""
        if self._dirty and self._since_rank >= self._rank_every:
            self._rank()
        self._unstage()
        prio = self._priority
        begun, fresh = self._head(self._heap), self._head(self._fresh)
        if begun is not None and (
            fresh is None
            or prio[fresh] <= prio[begun]
            or not self._urgent(prio[fresh], begun, workers)
        ):
            return self._take_head(self._heap)
        if fresh is None:
            return None
        if self._agree or self._critical(prio[fresh], workers):
            return self._take_head(self._fresh)
        heap, queued = self._fresh_order, self._queued
        while not queued[heap[0][1]]:
            heapq.heappop(heap)
        _, i = heapq.heappop(heap)
        self.take(i)
        return i

    def _take_head(self, heap: list[tuple[float, int]]) -> int:
        _, i = heapq.heappop(heap)
        self.take(i)
        return i

    def _urgent(self, priority: float, begun: int, workers: int) -> bool:
        """Whether a source whose path is this long must go before ``begun``: the path
        could lengthen the run (``_critical``) and, started after ``begun``, would not fit in
        the work left per worker less its ``_ENDGAME_SLACK`` share; or the run is in its last
        ``_FINAL_QUANTA_PER_WORKER`` quanta a worker."""
        if not self._critical(priority, workers):
            return False
        if self._left <= _FINAL_QUANTA_PER_WORKER * workers:
            return True
        wait_s = self.estimate(self._labels[begun])
        room_s = (self.work_left_s - wait_s) / workers * (1 - 1 / _ENDGAME_SLACK)
        return priority + wait_s > room_s

    def _critical(self, priority: float, workers: int) -> bool:
        """Whether a path this long could lengthen the run if it waits (``endgame``'s bound;
        before any duration is learned the work left is a guess, and every path counts). A
        chain's tier (``weigh``) is not path: it is left out."""
        if not self._learned_count:
            return True
        if self._extra is not None:
            priority = math.fmod(priority, CHAIN_TIER)
        return priority * (workers - 1) * _ENDGAME_SLACK >= self.work_left_s

    def take(self, i: int) -> bool:
        """Take ``i`` out of the ready set if it is there (its heap entry goes stale)."""
        if not self._queued[i]:
            return False
        self._queued[i] = 0
        self._queued_count -= 1
        return True

    def discard(self, i: int) -> None:
        self.take(i)

    def __len__(self) -> int:
        return self._queued_count


def _orders_agree(priority: array[float], order: array[int], source: bytes) -> bool:
    """Whether the sources by critical path (then index) are the sources in tree order, as
    where every source ranks the same and the tree walks them by index (independent quanta):
    one heap then serves both orders."""
    sources = np.flatnonzero(np.frombuffer(source, np.uint8))
    if len(sources) < 2:
        return True
    prio = np.frombuffer(priority, np.float64)[sources]
    places = np.frombuffer(order, np.int64)[sources]
    return bool((prio == prio[0]).all() and (np.diff(places) > 0).all())


def _moved(ranked: float, now: float) -> bool:
    """Whether an estimate moved enough since the ranks were computed to compute them again."""
    return abs(now - ranked) > max(_ABSOLUTE_CHANGE_S, _RELATIVE_CHANGE * ranked)


# a level's quanta with successors, those successors back to back, where each one's run starts
_Level = tuple[npt.NDArray[np.int32], npt.NDArray[np.int32], npt.NDArray[np.int32]]


def _plan(t: Topology) -> list[_Level]:
    """The bottom-level recurrence as a fixed plan, deepest level first (children always sit
    deeper than parents). Worked out once (4 bytes per edge and 8 per quantum with
    successors), so a re-rank is three numpy calls per level, not a dozen."""
    depth = as_numpy(t.depth)
    if not len(depth):
        return []
    ptr = np.asarray(as_numpy(t.succ_ptr), dtype=np.int64)  # (a view: already int64)
    succ = as_numpy(t.succ)
    order = np.argsort(depth, kind="stable")
    bounds = np.flatnonzero(np.diff(depth[order])) + 1
    plan = []
    for level in reversed(np.split(order, bounds)):
        starts, ends = ptr[level], ptr[level + 1]
        counts = ends - starts
        has = counts > 0
        if not has.any():
            continue
        nodes, starts, counts = level[has], starts[has], counts[has]
        offsets = np.cumsum(counts) - counts
        gather = np.repeat(starts - offsets, counts) + np.arange(int(counts.sum()))
        plan.append(
            (nodes.astype(np.int32), succ[gather].astype(np.int32), offsets.astype(np.int32))
        )
    return plan


def _bottom_levels(plan: list[_Level], own: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """own[i] + the heaviest bottom level among i's successors, level by level."""
    prio = own.astype(np.float64).copy()
    for nodes, below, offsets in plan:
        prio[nodes] += np.maximum.reduceat(prio[below], offsets)
    return prio


def _tree_order(t: Topology) -> array[int]:
    """Each quantum's place in a depth-first walk of the graph from its sinks (in index
    order), each quantum's parents walked in index order: a tree where every quantum but a
    sink hangs below its first successor, numbered in preorder. Sources first in this order
    finish what one sink (a gather) needs before starting on the next. Level by level with
    numpy: subtree sizes from the sources up, then places from the sinks down."""
    n = t.size
    if not n:
        return array("q")
    ptr = np.asarray(as_numpy(t.succ_ptr), dtype=np.int64)
    succ = np.asarray(as_numpy(t.succ), dtype=np.int64)
    depth = as_numpy(t.depth)
    inner = np.flatnonzero(np.diff(ptr))
    up = np.full(n, -1, dtype=np.int64)  # the first successor (-1: a sink, a root)
    if len(inner):
        up[inner] = np.minimum.reduceat(succ, ptr[inner])
    order = np.argsort(depth, kind="stable")
    levels = np.split(order, np.flatnonzero(np.diff(depth[order])) + 1)
    size = np.ones(n, dtype=np.int64)
    for level in levels:  # (a quantum sits deeper than every parent)
        below = level[up[level] >= 0]
        np.add.at(size, up[below], size[below])
    # Where each one starts among those hanging below the same quantum (the roots: one group)
    group = np.where(up >= 0, up, n)
    by_group = np.argsort(group, kind="stable")
    sizes, grouped = size[by_group], group[by_group]
    before = np.cumsum(sizes) - sizes
    first = np.ones(n, dtype=bool)
    np.not_equal(grouped[1:], grouped[:-1], out=first[1:])
    start = np.maximum.accumulate(np.where(first, np.arange(n), 0))
    offset = np.empty(n, dtype=np.int64)
    offset[by_group] = before - before[start]
    place = np.where(up < 0, offset, 0)
    for level in reversed(levels):
        below = level[up[level] >= 0]
        place[below] = place[up[below]] + 1 + offset[below]
    return array("q", place.tobytes())
