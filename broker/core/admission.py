"""Admission by resources: a quantum starts only when what the running quanta hold, plus its
own request, fits every budget (memory, cores, custom resources).

What a quantum requests: what it declares (its own values over its task label's, from the
graph), else its label's request from the run's configuration (a BPS config), else the run's
defaults (``--memory-per-quantum``, ``--cores-per-quantum``); without any, ``cpus`` counts one
and memory is learned: 1.05 x the largest peak its label's quanta used of their own so far
(their process's peak less what their executor held before them; a quantum that outgrows
that is the pressure watch's, and its peak moves the label's request). A label not
measured yet: under a budget the user set (``strict``), one of its quanta runs at a time
until it is, treated as possibly large: it starts only when three quarters of the budget are
free and holds all that was free until it ends (what it measures while it runs says nothing
of what it will take next); the label's quanta are ranked as a chain (below) until it is
measured, so the first is measured early. Under the host's
default budget each counts a worker's share of the budget (over the quanta the registered
workers run at once), or the largest request learned so far if that is more (the
memory-pressure watch covers one that needs more). A memory
retry raises the attempt's request (``raise_memory``).

What a worker holds: a worker runs its quanta one after another (``threads`` at a time), the
queued ones only after the running one, so it holds, per resource, the largest request among
its quanta (the sum of the ``threads`` largest): queueing a small quantum behind a large one
costs nothing more.

Which quantum may go ahead of one that does not fit (backfill): the first quantum in priority
order that fits nowhere is the *head*; the time it could start (its *shadow*) is when enough
of what runs now will have ended, by the durations learned. Another quantum goes ahead of it
only if it ends before the shadow, or if the head still fits at the shadow beside it: the head
is never delayed by quanta behind it, and what fits in the meantime is not left idle.

Which quanta wait for one another: quanta that each need more than half of a budget can never
run beside each other, so they run one after another whatever the graph says: the chain of
them is the run's bottleneck. Ranked by the graph alone they look short (a large coadd at the
end of its branch) and the quanta that could run beside them run first. ``chain`` ranks them
in tiers above all the rest: the first member (by depth, then graph order) and what leads to
it first, then the second and what leads to it, and so on, so each starts as soon as it fits
and the next is prepared while it runs; within a tier the critical path decides.

Pure: plain numbers in, decisions out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from broker.core.scheduler import CHAIN_TIER
from common.resources import CPUS, MEMORY, Amounts, format_memory

__all__ = ["UNMEASURED", "Admission", "Budget", "Refusal"]

# A learned request is this much above the largest peak measured for the label (quanta of one
# label are alike; what strays further is caught by the pressure watch and learned from)
LEARNED_MARGIN = 1.05
# A quantum of a label not measured yet starts only with this share of the memory budget free
UNMEASURED_SHARE = 0.75
UNMEASURED = -1.0  # a memory request still to be learned (first of its label)
# A label's learned peak moves only for a peak this much above it (the margin covers less):
# requests are not recomputed for every few KiB a warm executor's peak creeps up
_RELEARN = 1.05


@dataclass(frozen=True, slots=True)
class Budget:
    """What the run may use at once: memory in MiB, cores, and custom resources by name."""

    memory_mb: float = math.inf
    cpus: float = math.inf
    custom: Mapping[str, float] | None = None

    def amounts(self) -> Amounts:
        return {MEMORY: self.memory_mb, CPUS: self.cpus, **(self.custom or {})}


@dataclass(frozen=True, slots=True)
class Refusal:
    """A quantum that can never start: it asks for more of ``resource`` than the budget."""

    index: int
    resource: str
    asked: float
    budget: float


Vector = tuple[float, ...]


class _Holding:
    """What one worker holds: its quanta's request vectors, counted."""

    __slots__ = ("counts", "threads", "vector")

    def __init__(self, threads: int, width: int) -> None:
        self.threads = max(1, threads)
        self.counts: dict[Vector, int] = {}
        self.vector: Vector = (0.0,) * width

    def held(self, extra: Vector | None = None) -> Vector:
        """Per resource, the largest request held (the sum of the ``threads`` largest), with
        ``extra`` counted too."""
        vectors = list(self.counts.items())
        if extra is not None:
            vectors.append((extra, 1))
        if not vectors:
            return (0.0,) * len(self.vector)
        if self.threads == 1:
            return tuple(map(max, *(v for v, _ in vectors))) if len(vectors) > 1 else vectors[0][0]
        out = []
        for k in range(len(self.vector)):
            values = sorted((v[k] for v, n in vectors for _ in range(n)), reverse=True)
            out.append(sum(values[: self.threads]))
        return tuple(out)


def _widest(a: Vector | None, b: Vector | None) -> Vector | None:
    """Per resource the larger of ``a`` and ``b`` (None: not known, so none)."""
    if a is None or b is None:
        return None
    return tuple(map(max, a, b))


class Admission:
    """Requests, budgets and what each worker holds; see the module's rules.

    ``own``: the quanta that declare values of their own; ``label_of(i)``: quantum ``i``'s
    label number, ``labels`` their names; ``by_label``: what each label declares, the graph's
    over the run's configuration's; ``defaults``: for every quantum."""

    def __init__(
        self,
        budget: Budget,
        own: Mapping[int, Amounts],
        label_of: Callable[[int], int],
        labels: list[str],
        *,
        by_label: Mapping[str, Amounts] | None = None,
        defaults: Amounts | None = None,
        strict: bool = True,
        cpus_follow_workers: bool = False,
        representatives: Iterable[int] = (),
    ) -> None:
        amounts = budget.amounts()
        self.strict = strict
        self._cpus_floor = budget.cpus if cpus_follow_workers else None
        self._threads = 1  # quanta the registered workers run at once
        self.names: list[str] = list(amounts)
        self._slot = {name: k for k, name in enumerate(self.names)}
        self.budget: Vector = tuple(amounts.values())
        self._own = own
        self._label_of = label_of
        self._labels = labels
        self._by_label = {
            n: {**(defaults or {}), **(by_label or {}).get(label, {})}
            for n, label in enumerate(labels)
        }
        self._peak_mb: list[float | None] = [None] * len(labels)  # largest measured, by label
        # labels with an unmeasured quantum out -> (its worker, that quantum)
        self._probe_of: dict[int, tuple[bytes, int]] = {}
        self._raised: dict[int, float] = {}  # quantum -> memory request of its next attempt
        self._vectors: list[Vector | None] = [None] * len(labels)  # by label, while valid
        self._holding: dict[bytes, _Holding] = {}
        self._capacity: dict[bytes, Vector] = {}  # what workers offer of their own
        self._of: dict[tuple[bytes, int], Vector] = {}
        self.used: Vector = (0.0,) * len(self.names)
        self.tight = any(math.isfinite(b) for b in self.budget)
        # Loose: the largest request there is, times the quanta the workers run at once, fits
        # every budget, so nothing can fail to fit and nothing is counted (``update_loose``)
        self.loose = False
        self._reps = list(representatives)  # a quantum of each label that has any
        self._own_worst: Vector = (0.0,) * len(self.names)
        for i in own:  # (memory not declared is its label's: the representatives cover it)
            v = self._vector(i)
            self._own_worst = tuple(map(max, self._own_worst, (max(0.0, v[0]), *v[1:])))
        self._meta: list[tuple[float | None, int | None] | None] = [None] * len(labels)

    # ------------------------------------------------------------------ requests
    def _requested(self, i: int) -> tuple[Amounts, bool]:
        """Quantum ``i``'s request by name, and whether its memory was declared."""
        own = self._own.get(i)
        base = self._by_label[self._label_of(i)]
        request = {**base, **own} if own else base
        return request, MEMORY in request

    def dispatch_terms(self, i: int) -> tuple[float | None, int | None]:
        """(the memory ``i``'s next attempt declares, enforced while it runs, if any; the
        cores it declares, if any: it counts one otherwise)."""
        if i in self._own or i in self._raised:
            return self._terms(i)
        label = self._label_of(i)
        cached = self._meta[label]
        if cached is None:
            cached = self._meta[label] = self._terms(i)
        return cached

    def _terms(self, i: int) -> tuple[float | None, int | None]:
        request, declared = self._requested(i)
        raised = self._raised.get(i)
        memory = raised if raised is not None else request[MEMORY] if declared else None
        return memory, int(request[CPUS]) if CPUS in request else None

    def declared_memory(self, i: int) -> float | None:
        """The memory ``i``'s next attempt declares (enforced while it runs), if any."""
        return self.dispatch_terms(i)[0]

    def vector(self, i: int) -> Vector:
        """What ``i``'s next attempt asks of each resource (memory ``UNMEASURED`` for the first
        quanta of a label whose memory is neither declared nor measured)."""
        if i in self._own or i in self._raised:
            return self._vector(i)
        label = self._label_of(i)
        cached = self._vectors[label]
        if cached is None:
            cached = self._vectors[label] = self._vector(i)
        return cached

    def _vector(self, i: int) -> Vector:
        request, declared = self._requested(i)
        out = [request.get(name, 0.0) for name in self.names]
        out[1] = request.get(CPUS, 1.0)
        raised = self._raised.get(i)
        if raised is not None:
            out[0] = raised
        elif not declared and math.isinf(self.budget[0]):
            out[0] = 0.0  # no memory budget: nothing to learn it for
        elif not declared:
            peak = self._peak_mb[self._label_of(i)]
            # (what ran within the budget once may take all of it, never more)
            out[0] = UNMEASURED if peak is None else min(peak * LEARNED_MARGIN, self.budget[0])
        return tuple(out)

    def refusals(self, indices: Iterable[int]) -> list[Refusal]:
        """Quanta that ask for more than a budget (or a resource no budget offers)."""
        out = []
        for i in indices:
            for name, asked in zip(self.names, self.vector(i), strict=True):
                budget = self.budget[self._slot[name]]
                if asked > budget:
                    out.append(Refusal(i, name, asked, budget))
            request, _ = self._requested(i)
            for name in request.keys() - self._slot.keys():
                out.append(Refusal(i, name, request[name], 0.0))
        return out

    def learn(self, i: int, peak_mb: float | None) -> bool:
        """``i`` ended with this measured peak (None: no measurement); whether its label's
        request changed."""
        label = self._label_of(i)
        self._probe_of.pop(label, None)
        if peak_mb is not None and peak_mb > 0:
            known = self._peak_mb[label]
            if known is None or peak_mb > known * _RELEARN:
                self._peak_mb[label] = peak_mb
                # (the guess for labels not measured yet follows the largest learned)
                self._vectors = [None] * len(self._vectors)
                return True
        return False

    def raise_memory(self, i: int, mib: float) -> None:
        """``i``'s next attempt asks for (and is held to) ``mib``."""
        self._raised[i] = mib
        self._own_worst = tuple(map(max, self._own_worst, self._vector(i)))

    def update_loose(self) -> bool:
        """Recompute ``loose`` (after the workers, a learned request or a raised one changed);
        True if it just stopped being loose: what the workers hold must then be counted again
        (``hold`` for each)."""
        was = self.loose
        worst: Vector | None = self._own_worst
        for i in self._reps:
            vector = self.vector(i)
            unknown = vector[0] == UNMEASURED and self.strict  # (it may take all there is)
            worst = _widest(worst, None if unknown else self._concrete(vector))
        self.loose = (
            worst is not None
            and not self._capacity
            and all(w * self._threads <= b for w, b in zip(worst, self.budget, strict=True))
        )
        if self.loose and not was:
            self._holding.clear()
            self._of.clear()
            self.used = (0.0,) * len(self.names)
        return was and not self.loose

    def held_by(self, holdings: Iterable[tuple[int, Iterable[int]]]) -> Amounts:
        """What workers holding these quanta ((threads, quanta) each) hold, by resource:
        what ``in_use`` says where nothing is counted (``loose``)."""
        total = [0.0] * len(self.names)
        for threads, quanta in holdings:
            h = _Holding(threads, len(self.names))
            for i in quanta:
                v = self._concrete(self.vector(i))
                h.counts[v] = h.counts.get(v, 0) + 1
            total = [t + x for t, x in zip(total, h.held(), strict=True)]
        return dict(zip(self.names, total, strict=True))

    def offered(self, worker: bytes, resources: Mapping[str, float] | None) -> None:
        """``worker`` offers these resources of its own (its quanta must fit them too; a
        resource it does not name is limited by the run's budget only)."""
        if resources:
            self._capacity[worker] = tuple(resources.get(name, math.inf) for name in self.names)

    def workers_changed(self, threads: int) -> None:
        """The registered workers run ``threads`` quanta at once (a worker's share of the
        budget, for quanta not measured yet, is the budget over these). A default cpus
        budget (``cpus_follow_workers``) is at least that: quanta that declare nothing count
        one core each, and attached workers (of other hosts, too) must not sit idle for
        the cores of this one."""
        self._threads = max(1, threads)
        if self._cpus_floor is not None:
            cpus = max(self._cpus_floor, float(self._threads))
            self.budget = (self.budget[0], cpus, *self.budget[2:])

    def peak_mb(self, label: int) -> float | None:
        return self._peak_mb[label]

    def exclusive(self, i: int) -> bool:
        """Whether ``i`` needs more than half of some budget (so no two such run at once),
        or might: its label's memory is not measured yet."""
        vector = self.vector(i)
        if vector[0] == UNMEASURED:
            return self.strict
        return any(v > b / 2 for v, b in zip(vector, self.budget, strict=True))

    def chain(self, indices: Iterable[int], order: Callable[[int], float]) -> dict[int, float]:
        """Of ``indices``, those that cannot run beside one another (``exclusive``), each with
        its rank tier: ``CHAIN_TIER`` times one more than the members after it (by ``order``,
        lowest first, then graph order)."""
        members = sorted((i for i in indices if self.exclusive(i)), key=lambda i: (order(i), i))
        n = len(members)
        return {i: (n - k) * CHAIN_TIER for k, i in enumerate(members)}

    # ------------------------------------------------------------------ holding
    def _concrete(self, vector: Vector) -> Vector:
        """An unmeasured request made concrete: all the memory free now (``strict``), else a
        worker's share of the budget or the largest request learned, whichever is more."""
        if vector[0] != UNMEASURED:
            return vector
        if self.strict:
            return (max(0.0, self.budget[0] - self.used[0]), *vector[1:])
        learned = max((p for p in self._peak_mb if p is not None), default=0.0)
        share = self.budget[0] / self._threads
        guess = min(self.budget[0], max(share, learned * LEARNED_MARGIN))
        return (guess, *vector[1:])

    def fits(
        self, worker: bytes, threads: int, vector: Vector, label: int, used: Vector | None = None
    ) -> bool:
        """Whether ``vector`` may start on ``worker`` now (with ``used`` in use, if given)."""
        if self.loose:
            return True
        used = self.used if used is None else used
        if vector[0] == UNMEASURED and self.strict:
            if label in self._probe_of:
                return False
            if self.budget[0] - used[0] < UNMEASURED_SHARE * self.budget[0]:
                return False
        holding = self._holding.get(worker)
        concrete = self._concrete(vector)
        if holding is None:
            added = after = concrete
        else:
            before, after = holding.vector, holding.held(concrete)
            added = tuple(a - b for a, b in zip(after, before, strict=True))
        capacity = self._capacity.get(worker)
        if capacity is not None and any(a > c + 1e-9 for a, c in zip(after, capacity, strict=True)):
            return False
        return all(u + a <= b + 1e-9 for u, a, b in zip(used, added, self.budget, strict=True))

    def fits_moved(self, source: bytes, i: int, worker: bytes, threads: int, label: int) -> bool:
        """Whether ``i``, sent to ``source`` and not started, would fit on ``worker`` if taken
        back: what ``source`` holds for it alone is free then. (A quantum taken back to fit
        nowhere else would be sent to ``source`` again, and taken back again.)"""
        if self.loose:
            return True
        holding, mine = self._holding.get(source), self._of.get((source, i))
        if holding is None or mine is None:
            return self.fits(worker, threads, self.vector(i), label)
        rest = _Holding(holding.threads, len(self.names))
        rest.counts = dict(holding.counts)
        if rest.counts[mine] > 1:
            rest.counts[mine] -= 1
        else:
            del rest.counts[mine]
        freed = (h - r for h, r in zip(holding.vector, rest.held(), strict=True))
        used = tuple(u - f for u, f in zip(self.used, freed, strict=True))
        return self.fits(worker, threads, self.vector(i), label, used)

    def hold(self, worker: bytes, threads: int, i: int, vector: Vector, label: int) -> None:
        """``i`` was sent to ``worker`` with request ``vector``."""
        if self.loose:
            return
        if vector[0] == UNMEASURED:
            self._probe_of[label] = (worker, i)
        concrete = self._concrete(vector)
        holding = self._holding.get(worker)
        if holding is None:
            holding = self._holding[worker] = _Holding(threads, len(self.names))
        holding.counts[concrete] = holding.counts.get(concrete, 0) + 1
        self._of[worker, i] = concrete
        self._reset(holding, holding.held())

    def release(self, worker: bytes, i: int) -> None:
        """``i`` is no longer held by ``worker`` (ended, lost, taken back, put back): a probe
        that leaves unmeasured lets the next of its label probe."""
        if self.loose:
            return
        label = self._label_of(i)
        if self._probe_of.get(label) == (worker, i):
            del self._probe_of[label]
        vector = self._of.pop((worker, i), None)
        holding = self._holding.get(worker)
        if vector is None or holding is None:
            return
        left = holding.counts[vector] - 1
        if left:
            holding.counts[vector] = left
        else:
            del holding.counts[vector]
        self._reset(holding, holding.held())

    def forget(self, worker: bytes) -> None:
        """``worker`` is gone with all it held."""
        self._capacity.pop(worker, None)
        for label in [n for n, (w, _) in self._probe_of.items() if w == worker]:
            del self._probe_of[label]
        holding = self._holding.pop(worker, None)
        if holding is None:
            return
        for key in [k for k in self._of if k[0] == worker]:
            del self._of[key]
        self.used = tuple(u - h for u, h in zip(self.used, holding.vector, strict=True))

    def _reset(self, holding: _Holding, vector: Vector) -> None:
        self.used = tuple(
            u - old + new for u, old, new in zip(self.used, holding.vector, vector, strict=True)
        )
        holding.vector = vector

    def why_not(self, vector: Vector, label: int) -> str:
        """Why a quantum of ``vector`` cannot start now, for people: the first budget it
        does not fit (``memory: needs 8.0 GiB, 3.0 GiB free``)."""
        if vector[0] == UNMEASURED and self.strict and label in self._probe_of:
            return "memory: waiting for the first of its task to be measured"
        concrete = self._concrete(vector)
        for name, need, used, budget in zip(
            self.names, concrete, self.used, self.budget, strict=True
        ):
            if used + need > budget + 1e-9:
                free = max(0.0, budget - used)
                if name == MEMORY:
                    return f"memory: needs {format_memory(need)}, {format_memory(free)} free"
                return f"{name}: needs {need:g}, {free:g} free"
        return "waits for a quantum ahead of it that needs more"

    def in_use(self) -> Amounts:
        return dict(zip(self.names, self.used, strict=True))

    def budget_amounts(self) -> Amounts:
        return dict(zip(self.names, self.budget, strict=True))

    # ------------------------------------------------------------------ backfill
    def backfills(self, vector: Vector, ends: float, shadow: float, spare: Vector) -> Vector | None:
        """Whether a quantum of ``vector`` ending at ``ends`` may go ahead of the head whose
        start is ``shadow`` with ``spare`` beside it: the spare left if so (what it still
        holds at the shadow comes out of it), None if not."""
        if vector[0] == UNMEASURED:
            if self.strict:
                return None  # how much it holds is not known: it might delay the head
            vector = self._concrete(vector)
        if ends <= shadow:
            return spare
        if all(v <= s + 1e-9 for v, s in zip(vector, spare, strict=True)):
            return tuple(s - v for v, s in zip(vector, spare, strict=True))
        return None

    def shadow(self, vector: Vector, ends: Iterable[tuple[float, bytes]]) -> tuple[float, Vector]:
        """When ``vector`` (the head) could start, given when each worker's holding ends
        (``ends``: (time, worker)), and what is free beside it then."""
        need = self.budget if vector[0] == UNMEASURED and self.strict else self._concrete(vector)
        used = list(self.used)
        shadow = -math.inf
        for when, worker in sorted(ends):
            if all(u + n <= b + 1e-9 for u, n, b in zip(used, need, self.budget, strict=True)):
                break
            holding = self._holding.get(worker)
            if holding is not None:
                used = [u - h for u, h in zip(used, holding.vector, strict=True)]
            shadow = when
        else:
            if not all(u + n <= b + 1e-9 for u, n, b in zip(used, need, self.budget, strict=True)):
                return math.inf, (0.0,) * len(used)
        spare = tuple(b - u - n for u, n, b in zip(used, need, self.budget, strict=True))
        return shadow, spare
