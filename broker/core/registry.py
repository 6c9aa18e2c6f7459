"""The worker registry: who is connected, what each runs, when each was last heard from, and
which deadlines are due. Pure: takes an explicit ``now`` (monotonic seconds), no sockets.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

__all__ = ["InFlight", "WorkerInfo", "WorkerRegistry"]


@dataclass(frozen=True, slots=True)
class InFlight:
    """One attempt of one quantum on one worker; ``backstop`` is when the broker gives up.
    ``seq`` numbers the worker's dispatches; ``generation`` is the executor child it went to.
    A follow-on (``after``, a seq) runs only if that dispatch, sent just before it to the same
    child, succeeded there. An ``orphan`` was finished by a child that died since: its result
    is awaited until the backstop, then the attempt counts as lost."""

    quantum_id: str
    attempt: int
    sent_at: float
    backstop: float | None
    index: int  # the quantum's index in the graph
    seq: int = 0
    generation: int = 0
    orphan: bool = False
    after: int = 0


@dataclass(slots=True)
class WorkerInfo:
    worker_id: str
    identity: bytes
    pid: int
    host: str
    slots: int  # quanta it holds at once (the planner's call, within ``declared``)
    local: bool
    last_seen: float
    declared: int = 0  # quanta it said it accepts at once (0: no limit of its own)
    threads: int = 1  # quanta it runs at once
    refill: int = -1  # sent more only once it holds this many or fewer (-1: any free slot)
    in_flight: dict[str, InFlight] = field(default_factory=dict)
    completed: int = 0
    ready: bool = False  # said READY: its executor is loaded and it can take work
    ever_ready: bool = False  # has been READY at least once (its start-up is over)
    unready_since: float = 0.0  # when it last stopped (or never began) being READY
    generation: int = 0  # of the executor child that said READY last
    gone: int = 0  # the newest executor child generation reported dead
    sent: int = 0  # dispatches so far (the last one's ``seq``)

    @property
    def free_slots(self) -> int:
        return self.slots - len(self.in_flight)

    @property
    def wants_more(self) -> bool:
        """It has a free slot and is down to its refill mark: it is sent quanta again (and
        then filled, in one go, up to its slots)."""
        return self.free_slots > 0 and (self.refill < 0 or len(self.in_flight) <= self.refill)


def _silence_ends(w: WorkerInfo, limit_s: float, startup_s: float) -> float:
    """When ``w``'s agent is silent for too long: ``limit_s`` after it was last heard from, or
    ``startup_s`` at least until its first READY (its agent may be blocked starting the
    forkserver that imports the task modules). A worker that was READY once and lost its
    executor since is judged by ``limit_s``: its agent heartbeats while a new one starts."""
    return w.last_seen + (limit_s if w.ever_ready else max(limit_s, startup_s))


def _unready_ends(w: WorkerInfo, startup_s: float) -> float:
    """When ``w`` has gone without a READY executor for too long: ``startup_s`` after it joined
    or after its executor last went away (a worker that never gets an executor up would hold
    its place in the pool forever)."""
    return math.inf if w.ready else w.unready_since + startup_s


class WorkerRegistry:
    """Workers by ZeroMQ identity; an idle queue (least recently used first) for dispatch."""

    def __init__(self) -> None:
        self._by_identity: dict[bytes, WorkerInfo] = {}
        self._idle: OrderedDict[bytes, None] = OrderedDict()
        self._serial = 0
        self._ready = 0  # workers READY now

    def add(
        self,
        identity: bytes,
        pid: int,
        host: str,
        slots: int,
        *,
        local: bool,
        now: float,
        name: str | None = None,
    ) -> WorkerInfo:
        self._serial += 1
        worker_id = name or f"w{self._serial}"
        info = WorkerInfo(worker_id, identity, pid, host, max(1, slots), local, now)
        info.unready_since = now
        self._by_identity[identity] = info
        return info

    def mark_ready(self, info: WorkerInfo, now: float) -> None:
        """The worker can take quanta. Its first READY ends its start-up grace: its agent's
        silence is counted from then by the heartbeat window (the agent may have been busy
        starting the executor until just before)."""
        if not info.ever_ready:
            info.last_seen = max(info.last_seen, now)
        if not info.ready:
            info.ready = info.ever_ready = True
            self._ready += 1
            self._idle[info.identity] = None

    def mark_unready(self, info: WorkerInfo, now: float) -> None:
        """The worker takes nothing new until it says READY again (its executor is being
        replaced)."""
        if info.ready:
            info.ready = False
            self._ready -= 1
            info.unready_since = now
        self._idle.pop(info.identity, None)

    def ready_count(self) -> int:
        return self._ready

    def get(self, identity: bytes) -> WorkerInfo | None:
        return self._by_identity.get(identity)

    def workers(self) -> list[WorkerInfo]:
        return list(self._by_identity.values())

    def __len__(self) -> int:
        return len(self._by_identity)

    def seen(self, info: WorkerInfo, now: float) -> None:
        info.last_seen = now

    def resize(self, info: WorkerInfo, slots: int, refill: int = -1) -> None:
        """A new number of slots (at least 1) and refill mark; what is in flight stays."""
        info.slots = max(1, slots)
        info.refill = refill
        if info.ready and info.wants_more:
            self._idle.setdefault(info.identity, None)
        else:
            self._idle.pop(info.identity, None)

    def next_free(self) -> WorkerInfo | None:
        """The worker with the most free slots, most recently used first: a quantum whose
        parent just finished lands where that parent's outputs and imports are warm."""
        best: WorkerInfo | None = None
        for identity in reversed(self._idle):
            info = self._by_identity[identity]
            if info.free_slots == info.slots:
                return info  # idle: nothing beats it
            if info.free_slots > 0 and (best is None or info.free_slots > best.free_slots):
                best = info
        return best

    def free(self) -> Iterator[WorkerInfo]:
        """Workers with a free slot: idle ones first, most recently used first, then the
        others by most free slots."""
        busy: list[WorkerInfo] = []
        for identity in reversed(self._idle):
            info = self._by_identity[identity]
            if info.free_slots == info.slots:
                yield info
            elif info.free_slots > 0:
                busy.append(info)
        busy.sort(key=lambda w: -w.free_slots)
        yield from busy

    def assign(self, info: WorkerInfo, dispatch: InFlight) -> None:
        info.in_flight[dispatch.quantum_id] = dispatch
        if info.free_slots <= 0:
            self._idle.pop(info.identity, None)
        else:
            self._idle.move_to_end(info.identity)

    def complete(self, info: WorkerInfo, quantum_id: str, attempt: int) -> InFlight | None:
        """The matching in-flight dispatch, removed; None for a stale or unknown result."""
        d = info.in_flight.get(quantum_id)
        if d is None or d.attempt != attempt:
            return None
        del info.in_flight[quantum_id]
        info.completed += 1
        # (after a resize it may still hold more than its slots)
        if info.ready and info.wants_more:
            self._idle[info.identity] = None
            self._idle.move_to_end(info.identity)
        return d

    def orphan(self, info: WorkerInfo, d: InFlight, backstop: float) -> None:
        """``d``'s executor died after finishing it: await its result until ``backstop``."""
        info.in_flight[d.quantum_id] = replace(d, backstop=backstop, orphan=True)

    def remove(self, info: WorkerInfo) -> list[InFlight]:
        """Forget a worker; return what it had in flight."""
        if self._by_identity.pop(info.identity, None) is not None and info.ready:
            self._ready -= 1
        self._idle.pop(info.identity, None)
        lost = list(info.in_flight.values())
        info.in_flight.clear()
        return lost

    def by_pid(self, pid: int) -> WorkerInfo | None:
        for info in self._by_identity.values():
            if info.local and info.pid == pid:
                return info
        return None

    def silent(self, now: float, limit_s: float, startup_s: float = 0.0) -> list[WorkerInfo]:
        """Workers not heard from for as long as they may be silent (``_silence_ends``)."""
        return [w for w in self._by_identity.values() if now > _silence_ends(w, limit_s, startup_s)]

    def stuck(self, now: float, startup_s: float) -> list[WorkerInfo]:
        """Workers without a READY executor for as long as a start may take (``_unready_ends``)."""
        return [w for w in self._by_identity.values() if now >= _unready_ends(w, startup_s)]

    def overdue(self, now: float) -> list[tuple[WorkerInfo, InFlight]]:
        return [
            (w, d)
            for w in self._by_identity.values()
            for d in w.in_flight.values()
            if d.backstop is not None and now >= d.backstop
        ]

    def next_deadline(self, limit_s: float, startup_s: float = 0.0) -> float | None:
        """The earliest moment a worker could be declared silent or stuck, or a backstop
        expire."""
        times = [_silence_ends(w, limit_s, startup_s) for w in self._by_identity.values()]
        times += [_unready_ends(w, startup_s) for w in self._by_identity.values() if not w.ready]
        times += [
            d.backstop
            for w in self._by_identity.values()
            for d in w.in_flight.values()
            if d.backstop is not None
        ]
        return min(times, default=None)
