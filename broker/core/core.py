"""The broker core: every quantum transition and every dispatch decision, in one place.

Transport-neutral and steppable (huey-style): a driver (the zmq server loop, the in-process
mode, the Dask engine) feeds it the events it observed with an explicit monotonic ``now`` and
carries out the actions it returns. Owns graph state, scheduler, worker registry, ledger and
journal; never touches a socket, a process or the monotonic clock (wall-clock time, for the
report only, comes from an injectable function).

    step(events, now): apply events -> expire silent and stuck workers, overdue quanta
                       -> keep the local workers supplied (or give up: none can be had)
                       -> finish (stopping, or every quantum ended) or dispatch -> actions
"""

from __future__ import annotations

import logging
import math
import time
from array import array
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field, replace
from typing import assert_never

import numpy as np

from broker.core.admission import Admission, Budget, Refusal, Vector
from broker.core.droplog import DropLog
from broker.core.events import (
    Action,
    AdmitWorker,
    Dispatch,
    Event,
    ExecutorGone,
    ExecutorUnreachable,
    ForgetWorker,
    HostMemory,
    KillWorker,
    PreemptQuantum,
    ProcessExited,
    ProcessStarted,
    QuantumRevoked,
    RefuseWorker,
    ResultReceived,
    RevokeQuantum,
    ShutdownWorker,
    SpawnFailed,
    SpawnWorkers,
    StopRequested,
    StopRun,
    WorkerCapacity,
    WorkerHeard,
    WorkerJoined,
    WorkerLeft,
    WorkerReady,
)
from broker.core.footprint import Footprint
from broker.core.journaling import JournalSink, JournalState
from broker.core.ledger import Ledger
from broker.core.monitor import Monitor
from broker.core.planner import FIXED, DispatchPlanner, PlanInputs, TransportProfile
from broker.core.pressure import PressureWatch
from broker.core.registry import InFlight, WorkerInfo, WorkerRegistry
from broker.core.scheduler import Scheduler
from broker.core.state import GraphState
from broker.core.supply import MAX_START_FAILURES, WorkerSupply
from common.config import ExecutionConfig
from common.errors import GraphError, MPGraphExecutorError
from common.graph import QuantumGraph
from common.graphparts import names
from common.protocol import ExecutorExited, Result, ResultStatus
from common.report import Reason, Report
from common.resources import CPUS, MEMORY, Amounts, format_memory
from common.status import ResourceUse, RunStatus, WaitingInfo
from common.topology import as_numpy

__all__ = [
    "BACKSTOP_GRACE_S",
    "ORPHAN_GRACE_S",
    "STARTUP_HOLD_S",
    "STEAL_AFTER_S",
    "BrokerCore",
    "RunTimings",
    "WorkerView",
    "check_requests",
]

logger = logging.getLogger(__name__)

BACKSTOP_GRACE_S = 5.0  # beyond a quantum's timeout, before the broker kills the worker
STARTUP_HOLD_S = 10.0  # wait this long at most for the expected workers before dispatching
STEAL_AFTER_S = 0.05  # a prefetched quantum is taken back once the one ahead ran this long
# How fast the estimate of how often a quantum just released outranks the one queued ahead
# of it (``prefetch_cost_s``) follows new completions ...
_INVERSION_WEIGHT = 0.05
# ... of which one in this many is looked at (the look costs ~25 us with cold caches, paid
# per quantum; the drivers consult the estimate every 0.1 s)
_INVERSION_SAMPLE_EVERY = 8
# A follow-on is looked for among at most this many children of the quantum it would follow
# (a quantum read by thousands is no chain link; the decision stays a small constant).
_FOLLOW_SCAN = 16
# Quanta that cannot run beside each other are ranked as a chain when there are at most this
# many (a bottleneck of a few large quanta; thousands of them are ranked by the graph alone)
_CHAIN_MAX = 4096
# A quantum that does not fit goes back to the ready queue; at most this many are looked past
# in one dispatch for one that may go ahead of them (backfill)
_BACKFILL_SCAN = 64
_WAITING_SHOWN = 5  # ready quanta passed over that a status names, with why
# A quantum memory pressure put back this often is not stopped again: pressure that returns
# whenever it runs is not of its making alone, and it must be able to finish
_MAX_PUT_BACKS = 2
# A dead executor child's results travel on its own connection, its agent's report on
# another: a result still on its way is awaited this long before the attempt counts as lost.
ORPHAN_GRACE_S = 2.0


@dataclass(slots=True)
class RunTimings:
    """Monotonic instants of the run, recorded for benchmarks and progress; never read to
    decide anything."""

    started: float = 0.0
    workers_ready: float | None = None
    first_dispatch: float | None = None
    last_result: float | None = None
    workers_started: int = 0  # local worker processes, replacements included (driver-kept)
    worker_losses: list[tuple[float, int, str]] = field(default_factory=list)  # (when, pid, why)


@dataclass(frozen=True, slots=True)
class WorkerView:
    """What a driver may know of a registered worker: its name, process, whether it is one
    the driver can kill, how many quanta it holds now and may hold at once."""

    worker_id: str
    pid: int
    local: bool
    held: int
    capacity: int


class BrokerCore:
    """One run of ``graph``: ``start(now)`` once, then ``step(events, now)`` until it returns
    ``StopRun``. ``done`` holds (the indices of) quanta an earlier run finished (resume).
    Quanta are graph indices inside; ids only at the edges (events, actions, journal).
    ``spawns``: the driver starts local worker processes when asked (``SpawnWorkers``) and
    reports their starts and exits; the core keeps ``config.spawn_count`` of them.
    ``transport``: what the driver's dispatches cost, for the planner (how many quanta each
    worker holds); ``FIXED``: what each worker declared."""

    def __init__(
        self,
        graph: QuantumGraph,
        config: ExecutionConfig,
        *,
        journal: JournalSink | None = None,
        done: Collection[int] = (),
        in_process: bool = False,
        follow_ons: bool = False,
        spawns: bool = False,
        transport: TransportProfile = FIXED,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.graph = graph
        self._follow_ons = follow_ons
        self.config = config
        self._wall = wall
        self._ids = graph.ids
        labels = _label_numbers(graph)
        self._labels = labels  # label number per quantum
        self.state = GraphState(graph.topology, labels, graph.labels)
        self.scheduler = Scheduler(graph.topology, labels, len(graph.labels))
        self.registry = WorkerRegistry()
        self.admission = _admission(graph, config, labels)
        self.admission.update_loose()
        self.planner = DispatchPlanner(transport, self.admission)
        self.ledger = Ledger(graph, in_process=in_process)
        done = sorted(done)
        _refuse(graph, self.admission, done)
        self.state.preset_succeeded(done)
        self.ledger.resumed(done)
        self.footprint = Footprint(graph, self.state)
        for i in done:
            self.footprint.produced(i)
        self.scheduler.resumed(done)
        self._chain: dict[int, float] = {}
        self._weigh_chain()
        self._journal = journal
        self._monitor = Monitor(graph, self.state, self.scheduler, self.registry, self.ledger)
        self.timings = RunTimings()
        self._expected_workers = 0 if in_process else config.spawn_count
        self._holding = self._expected_workers > 0
        self._revoking: set[tuple[str, int]] = set()
        self._released: list[int] = []  # children made ready since the last dispatch
        self._head_priority: float | None = None  # of the quantum waiting for resources
        self._failures = 0  # quanta failed for good
        self.pressure = PressureWatch(config.memory_mb or math.inf, config.memory_reserve_mb)
        self._under_pressure = False
        self._preempting: set[tuple[str, int]] = set()  # attempts stopped by the watch
        self._waiting: list[tuple[int, str]] = []  # ready quanta passed over, and why
        self._let_finish = False  # stopping without a deadline: running quanta finish
        self._touched: set[bytes] = set()  # workers whose last dispatch changed (follow-ons)
        # Nothing can be silent or overdue before this (a lower bound: checks are not paid per
        # step, only when one could find something).
        self._expire_at = -math.inf
        self._inversions = 0.0  # how often a released child outranks what was queued
        self._samples = 0
        self._releases = 0  # successes with children (one in _INVERSION_SAMPLE_EVERY sampled)
        self._supply = (
            WorkerSupply(config.spawn_count, config.startup_timeout_s) if spawns else None
        )
        self._supply_at = -math.inf  # nothing for the supply to do before this
        self._fatal: str | None = None
        self._stop_reason: str | None = None
        self._stop_now = False
        self._drain_deadline: float | None = None
        self._over = False
        self._drops = DropLog(logger)

    # ------------------------------------------------------------------ queries
    @property
    def stop_reason(self) -> str | None:
        return self._stop_reason

    @property
    def fatal(self) -> str | None:
        """Why the run could not go on (no workers could be had), if that stopped it."""
        return self._fatal

    @property
    def over(self) -> bool:
        """True once StopRun was returned."""
        return self._over

    def worker(self, key: bytes) -> WorkerView | None:
        """The registered worker ``key`` (None: none such, or written off)."""
        info = self.registry.get(key)
        if info is None:
            return None
        return WorkerView(info.worker_id, info.pid, info.local, len(info.in_flight), info.slots)

    def worker_named(self, worker_id: str) -> bytes | None:
        """The key of the registered worker called ``worker_id``."""
        return next((w.identity for w in self.registry.workers() if w.worker_id == worker_id), None)

    def worker_keys(self) -> list[bytes]:
        """Every registered worker's key."""
        return [w.identity for w in self.registry.workers()]

    def status(self, now: float) -> RunStatus:
        t = self.timings
        busy = now - t.first_dispatch if t.first_dispatch is not None else 0.0
        status = self._monitor.snapshot(now, now - t.started, busy, self._stop_reason)
        adm = self.admission
        held = self.held()
        uses = [
            ResourceUse(name, held[name], budget)
            for name, budget in zip(adm.names, adm.budget, strict=True)
            if math.isfinite(budget)
        ]
        g = self.graph
        waiting = [WaitingInfo(g.ids[i], g.label_at(i), why) for i, why in self._waiting]
        if len(self.scheduler) > len(waiting) and self.registry.next_free() is None:
            waiting.append(WaitingInfo("", "", f"{len(self.scheduler)} ready: no idle worker"))
        return replace(status, resources=uses, waiting=waiting)

    def held(self) -> dict[str, float]:
        """What the quanta sent to workers hold, by resource (memory in MiB)."""
        adm = self.admission
        if not adm.loose:
            return adm.in_use()
        # (nothing is counted while nothing can fail to fit: worked out now)
        return adm.held_by(
            (w.threads, [d.index for d in w.in_flight.values()]) for w in self.registry.workers()
        )

    def error(self) -> MPGraphExecutorError | None:
        """The error ``execute()`` raises for this outcome, or None if all succeeded."""
        return self.ledger.error(self.state)

    def report(self, error: Exception | None) -> Report:
        """The run's report with ``error`` as its outcome, and figures of the run."""
        report = self.ledger.report(self.state, error)
        report.figures["peakIntermediates"] = self.footprint.peak
        return report

    def prefetch_cost_s(self) -> float:
        """What queueing a quantum behind the running one costs per completion, in seconds:
        how often a child that a finishing quantum releases outranks the quantum queued on
        that worker (which then runs first), times the mean duration. Drivers queue nothing
        ahead where this exceeds the dispatch round trip that queueing hides."""
        mean = self.scheduler.mean_duration_s()
        return 0.0 if mean is None else self._inversions * mean

    def next_deadline(self, now: float) -> float | None:
        """The earliest moment ``step`` has something to do without a new event."""
        times = [self._expire_at if math.isfinite(self._expire_at) else None]
        times.append(self._drain_deadline)
        if self._supply is not None and self._stop_reason is None:
            # (kept by every step: the supply's own next deadline)
            times.append(self._supply_at if math.isfinite(self._supply_at) else None)
        if self._holding:
            times.append(self.timings.started + STARTUP_HOLD_S)
        times.append(self._next_steal(now))
        times.append(self.pressure.next_deadline())
        return min((t for t in times if t is not None), default=None)

    # ------------------------------------------------------------------ stepping
    def start(self, now: float) -> list[Action]:
        """Queue the initial ready quanta; a run with nothing to do is over at once."""
        self.timings.started = now
        for i in self.state.initial_ready():
            self.scheduler.push(i)
        return self.step((), now)

    def step(self, events: Iterable[Event], now: float) -> list[Action]:
        """Apply ``events`` seen by ``now``, then decide. Returns the actions to carry out."""
        if self._over:
            return []
        out: list[Action] = []
        for event in events:
            self._apply(event, now, out)
        self._expire(now, out)
        self._keep_supplied(now, out)
        self._watch_pressure(now, out)
        self._replan(now)
        if self._should_finish(now, out):
            self._finish(out)
        else:
            self._dispatch(now, out)
        if self._journal is not None:
            self._journal.flush_if_due(now)
        return out

    def _apply(self, event: Event, now: float, out: list[Action]) -> None:
        if isinstance(event, WorkerJoined):
            self._join(event, now, out)
            return
        if isinstance(event, StopRequested):
            self._request_stop(event.reason, graceful=event.graceful)
            return
        if isinstance(event, ProcessStarted | SpawnFailed | ProcessExited):
            self._process_event(event, now, out)
            return
        if isinstance(event, HostMemory):
            self.pressure.host(event.available_mb)
            return
        info = self.registry.get(event.worker)
        if info is None:
            if not isinstance(event, WorkerLeft):
                out.append(RefuseWorker(event.worker, "not a registered worker of this run"))
            return
        match event:
            case WorkerReady(generation=generation):
                if generation and (generation <= info.gone or generation < info.generation):
                    return  # that executor child is known to be dead, or a newer one is up
                info.generation = generation
                self.registry.mark_ready(info, now)
                self._touched.add(info.identity)
                if info.local and self._supply is not None:
                    self._supply.ready(info.pid)
                    self._supply_at = -math.inf  # the failures in a row are over
                # Up: its silence counts by the heartbeat window from now on.
                limit = self.config.worker_silence_limit_s
                self._expire_at = min(self._expire_at, info.last_seen + limit)
                if self.timings.workers_ready is None and self._enough_ready():
                    self.timings.workers_ready = now
            case WorkerCapacity(slots=slots):
                info.declared = slots
                self._plan_worker(info)
            case WorkerHeard(rss_kb=rss_kb):
                self.registry.seen(info, now)
                self.pressure.measured(info.identity, None if rss_kb is None else rss_kb / 1024)
            case ResultReceived(result=result):
                self._on_result(info, result, now)
            case QuantumRevoked(quantum_id=qid, attempt=attempt):
                self._on_revoked(info, qid, attempt)
            case ExecutorGone(exited=exited):
                self.pressure.ended(info.identity)  # (its child, measured, is gone)
                self._executor_gone(info, exited, now)
            case ExecutorUnreachable(generation=generation):
                self._executor_unreachable(info, generation, now)
            case WorkerLeft(why=why):
                self._lose_worker(info, why, now, out)
            case _:
                assert_never(event)

    def _request_stop(self, reason: str, *, graceful: bool = False) -> None:
        """Stop dispatching; the next step drains (graceful) or finishes at once."""
        if self._stop_reason is None:
            self._stop_reason = reason
        if not graceful:
            self._stop_now = True

    # ------------------------------------------------------------------ transitions
    def _join(self, event: WorkerJoined, now: float, out: list[Action]) -> None:
        if self.registry.get(event.worker) is not None:
            self._drops.warn("duplicate HELLO from %r ignored", event.worker[:16], now=now)
            return
        info = self.registry.add(
            event.worker,
            event.pid,
            event.host,
            self.planner.capacity(event.slots, event.threads),
            local=event.local,
            now=now,
            name=event.name,
        )
        info.declared, info.threads = event.slots, max(1, event.threads)
        self.admission.offered(info.identity, event.resources)
        self._count_threads()
        self._plan_worker(info)
        logger.info(
            "worker %s registered (pid %d on %s, %s)",
            info.worker_id,
            event.pid,
            event.host[:100],
            "local" if event.local else "attached",
        )
        if event.local and self._supply is not None:
            self._supply.registered(event.pid)
        c = self.config
        soonest = now + min(c.worker_silence_limit_s, c.startup_timeout_s)
        self._expire_at = min(self._expire_at, soonest)
        out.append(AdmitWorker(event.worker, info.worker_id))
        if self._stop_reason is not None and self._drain_deadline is not None:
            grace = max(0.0, self._drain_deadline - now)
            out.append(ShutdownWorker(info.identity, self._stop_reason, grace))

    def _dispatched(self, info: WorkerInfo, i: int, now: float, after: int = 0) -> Dispatch:
        """READY -> RUNNING on ``info`` (PENDING -> RUNNING for a follow-on of dispatch
        ``after``): a new attempt, journaled, with its backstop."""
        qid = self._ids[i]
        declared, cpus = self.admission.dispatch_terms(i)
        attempt = self.ledger.dispatched(i, info.worker_id, self._wall(), declared)
        self._record(i, attempt, JournalState.RUNNING)
        timeout = self.graph.timeouts.get(i, self.config.timeout_s)
        backstop = None
        if timeout is not None:  # (a prefetched quantum starts after those ahead of it)
            ahead = sum((d.backstop or now) - now for d in info.in_flight.values())
            backstop = now + ahead + timeout + BACKSTOP_GRACE_S
        if after:
            self.state.follow(i)
        else:
            self.state.start(i)
        info.sent += 1
        d = InFlight(qid, attempt, now, backstop, i, info.sent, info.generation, after=after)
        self.registry.assign(info, d)
        adm = self.admission
        if not adm.loose:
            adm.hold(info.identity, info.threads, i, adm.vector(i), self._labels[i])
        if backstop is not None:
            self._expire_at = min(self._expire_at, backstop)
        self._touched.add(info.identity)
        if self.timings.first_dispatch is None:
            self.timings.first_dispatch = now
        memory = declared if self.config.memory_enforce != "off" else None
        return Dispatch(info.identity, qid, attempt, timeout, i, d.seq, after, memory, cpus)

    def _undispatched(self, i: int) -> None:
        """RUNNING -> READY (PENDING for a follow-on whose parent did not succeed): an attempt
        was taken back before it started."""
        self.ledger.undispatched(i)
        if self.state.requeue(i):
            self.scheduler.push(i)

    def _drop_followers(self, info: WorkerInfo, seq: int) -> None:
        """Dispatch ``seq`` on ``info`` ended without succeeding: its follow-on (and theirs)
        will not run there (the child drops them); they wait for their parents again."""
        while seq:
            f = next((d for d in info.in_flight.values() if d.after == seq), None)
            if f is None:
                return
            self._revoking.discard((f.quantum_id, f.attempt))
            self._complete(info, f.quantum_id, f.attempt)
            self._undispatched(f.index)
            seq = f.seq

    def _on_result(self, info: WorkerInfo, result: Result, now: float) -> None:
        self._preempting.discard((result.quantum_id, result.attempt))  # (ended before)
        d = self._complete(info, result.quantum_id, result.attempt)
        if d is None:
            self._drops.warn(
                "ignoring result for %s attempt %d from %s: not in flight there",
                result.quantum_id[:200],
                result.attempt,
                info.worker_id,
                now=now,
            )
            return
        self.pressure.ended(info.identity)  # (its measure was this quantum's)
        if result.status is not ResultStatus.SUCCESS:
            self._drop_followers(info, d.seq)
        else:
            self._touched.add(info.identity)  # its follow-on, if any, is a plain one now
        t = self.graph.topology
        # Only a success with children can release any: nothing to measure for the rest.
        releases = (
            result.status is ResultStatus.SUCCESS and t.succ_ptr[d.index + 1] > t.succ_ptr[d.index]
        )
        if releases:
            self._releases += 1
        sample = releases and self._releases % _INVERSION_SAMPLE_EVERY == 1
        rival = self._rival(info) if sample else None
        before = len(self._released)
        self._finished(d.index, result, now)
        if rival is not None and len(self._released) > before:
            self._note_inversion(rival, self._released[before:])

    def _rival(self, info: WorkerInfo) -> float | None:
        """The priority a child released now would have to beat: the quantum queued next on
        ``info``, or (none queued) the best one ready, which would have been queued."""
        rival = self.scheduler.top_priority()
        rest = info.in_flight.values()
        if rest:
            queued = self.scheduler.priority(min(rest, key=lambda q: q.seq).index)
            rival = queued if rival is None else max(rival, queued)
        return rival

    def _note_inversion(self, rival: float, released: list[int]) -> None:
        """Did a child just released become the most critical quantum there is while
        ``rival`` runs ahead of it? Folded into ``prefetch_cost_s``."""
        outranked = max(self.scheduler.priority(c) for c in released) > rival
        self._samples += 1  # a plain mean at first, then a moving one
        weight = max(_INVERSION_WEIGHT, 1.0 / self._samples)
        self._inversions += weight * (outranked - self._inversions)

    def _finished(self, i: int, result: Result, now: float) -> None:
        """RUNNING -> SUCCEEDED (children may become ready) or FAILED / TIMED_OUT."""
        self.timings.last_result = now
        self.ledger.result(i, result)
        own = _own_kb(result)
        if self.admission.learn(i, None if own is None else own / 1024):
            self._refresh_admission()
            self._weigh_chain()
        self._record(i, result.attempt, JournalState(result.status.value))
        match result.status:
            case ResultStatus.SUCCESS:
                self.scheduler.learn(self._labels[i], result.duration_s)
                for child in self.state.succeed(i):
                    self.scheduler.release(child)
                    self._released.append(child)
                self._ended(i)
                self.footprint.produced(i)
            case ResultStatus.TIMEOUT:
                self._failed(i, f"timed out: {result.exc_message}", timed_out=True)
            case ResultStatus.FAILURE:
                if not result.stop_run and self._retried(i, result):
                    return
                self._failed(i, self.ledger.describe(i))
                if result.stop_run:
                    self._request_stop(f"{self._ids[i]} failed in a way that stops the run")

    def _retried(self, i: int, result: Result) -> bool:
        """Whether the failed attempt ``result`` of ``i`` is tried again (READY again,
        journaled RETRY). Within ``retries`` attempts after the first: a memory failure with a
        ``memory_multiplier``, its request raised (at most to ``memory_max_mb``; not if it
        was at the most already or would not fit the budget); any other failure only where
        ``retry_unless_exit`` is given and does not name its exit code."""
        c = self.config
        if result.attempt > c.retries:
            return False
        if result.reason is Reason.MEMORY:
            if c.memory_multiplier is None:
                return False
            asked = self.admission.declared_memory(i)
            own = _own_kb(result)
            base = asked if asked is not None else None if own is None else own / 1024
            if base is None:
                return False
            limit = min(c.memory_max_mb or math.inf, self.admission.budget[0])
            raised = min(base * c.memory_multiplier, limit)
            if raised <= base:
                return False
            self.admission.raise_memory(i, raised)
            self._refresh_admission()
            why = f"memory: asking {format_memory(raised)} (was {format_memory(base)})"
        elif c.retry_unless_exit is None or result.exit_code in c.retry_unless_exit:
            return False
        else:
            why = f"exit code {result.exit_code}"
        logger.warning("retrying %s (attempt %d failed: %s)", self._ids[i], result.attempt, why)
        self._record(i, result.attempt, JournalState.RETRY)
        if self.state.requeue(i):
            self.scheduler.push(i)
        return True

    def _failed(self, i: int, what: str, *, timed_out: bool = False) -> None:
        """The quantum failed: its unfinished descendants are skipped (``blockedBy`` it)."""
        skipped = self.state.fail(i, timed_out=timed_out)
        self._ended(i)
        for s in skipped:
            self.scheduler.discard(s)
            self._ended(s)
            self._record(s, self.ledger.attempts[s], JournalState.SKIPPED)
        logger.warning("quantum %s; %d descendant(s) skipped", what, len(skipped))
        self._failures += 1
        if self.config.fail_fast:
            self._request_stop(f"fail-fast: {what}")
        elif self.config.max_failures is not None and self._failures >= self.config.max_failures:
            # what runs finishes (and is reported); nothing new starts
            reason = f"{self._failures} quanta failed (--max-failures {self.config.max_failures})"
            self._request_stop(reason, graceful=True)
            self._let_finish = True

    def _lost(self, d: InFlight, why: str, reason: Reason = Reason.WORKER_LOST) -> None:
        """An attempt ended without a result: retried (attempt + 1 later) or failed."""
        if self._stop_reason is not None:
            return  # stopping: it stays unfinished and is cancelled at the end
        if reason is Reason.WORKER_LOST and d.attempt <= self.config.retries:
            logger.warning("re-dispatching %s (attempt %d lost: %s)", d.quantum_id, d.attempt, why)
            self.ledger.lost_attempt(d.index, reason, why)
            self._record(d.index, d.attempt, JournalState.RETRY)
            if self.state.requeue(d.index):
                self.scheduler.push(d.index)
            return
        timed_out = reason is Reason.TIMEOUT
        self.ledger.lost(d.index, reason, why, self._wall())
        self._record(
            d.index, d.attempt, JournalState.TIMEOUT if timed_out else JournalState.FAILURE
        )
        what = "timed out" if timed_out else "lost with its worker"
        self._failed(d.index, f"{d.quantum_id} {what}: {why}", timed_out=timed_out)

    def _cancelled(self) -> int:
        """Every unfinished quantum -> CANCELLED (the run stopped)."""
        cancelled = self.state.cancel()
        for i in cancelled:
            self.scheduler.discard(i)
            self._ended(i)
            self._record(i, self.ledger.attempts[i], JournalState.CANCELLED)
        if cancelled:
            logger.warning("%d quanta cancelled (%s)", len(cancelled), self._stop_reason)
        return len(cancelled)

    def _ended(self, i: int) -> None:
        """``i`` ended, however: it reads nothing more and its work no longer remains."""
        self.footprint.ended(i)
        self.scheduler.ended(i)

    def _record(self, i: int, attempt: int, state: JournalState) -> None:
        if self._journal is not None:
            self._journal.record(self._ids[i], attempt, state)

    # ------------------------------------------------------------------ workers
    def _complete(self, info: WorkerInfo, quantum_id: str, attempt: int) -> InFlight | None:
        """``info`` no longer holds this attempt (``WorkerRegistry.complete``): what it
        reserved is free."""
        d = self.registry.complete(info, quantum_id, attempt)
        if d is not None and not self.admission.loose:
            self.admission.release(info.identity, d.index)
        if d is not None and self._revoking:
            self._revoking.discard((quantum_id, attempt))  # (a refused revocation ends here)
        return d

    def _lose_worker(
        self, info: WorkerInfo, why: str, now: float, out: list[Action], *, kill: bool = True
    ) -> None:
        """Forget a worker: retry or fail what it ran; a local one is killed (unless its
        process is known to have ended)."""
        self.timings.worker_losses.append((now, info.pid, why))
        lost = self.registry.remove(info)
        self.admission.forget(info.identity)
        self.pressure.forget(info.identity)
        self._count_threads()
        seqs = {d.seq for d in lost}
        for d in sorted(lost, key=lambda d: d.seq, reverse=True):  # follow-ons first
            self._revoking.discard((d.quantum_id, d.attempt))
            if d.after in seqs:
                self._undispatched(d.index)  # its parent did not succeed: it never ran
            else:
                self._lost(d, why)
        if info.local and kill:
            out.append(KillWorker(info.identity, info.pid))
        out.append(ForgetWorker(info.identity))
        self._supply_at = -math.inf  # (whether workers can be had counts the registered)
        logger.warning("%s", why)

    def _process_event(
        self, event: ProcessStarted | SpawnFailed | ProcessExited, now: float, out: list[Action]
    ) -> None:
        """A local worker process started, failed to start or ended: the supply counts it; a
        registered one that ended is lost (its quanta retried or failed)."""
        self._supply_at = -math.inf
        supply = self._supply
        match event:
            case ProcessStarted(pid=pid):
                if supply is not None:
                    supply.started(pid, now)
            case SpawnFailed(why=why, count=count):
                logger.warning("cannot start %d worker process(es): %s", count, why)
                if supply is not None:
                    supply.start_failed(f"cannot start a worker process: {why}", now, count)
            case ProcessExited(pid=pid, why=why):
                info = self.registry.by_pid(pid)
                if info is not None:
                    what = f"worker {info.worker_id} (pid {pid}) {why}"
                    self._lose_worker(info, what, now, out, kill=False)
                registered = supply is not None and supply.exited(pid, f"process {pid} {why}", now)
                if info is None and not registered and self._stop_reason is None:
                    logger.warning("worker process %d %s before registering", pid, why)

    def _keep_supplied(self, now: float, out: list[Action]) -> None:
        """Kill local processes that never registered, start replacements for those gone,
        and stop the run when no worker can be had (``WorkerSupply``'s rules)."""
        supply = self._supply
        if supply is None or self._stop_reason is not None or now < self._supply_at:
            return
        for pid in supply.overdue(now):
            logger.warning(
                "worker process %d did not register within %.0fs: killing it",
                pid,
                self.config.startup_timeout_s,
            )
            out.append(KillWorker(None, pid))
        if supply.exhausted(len(self.registry)):
            self._fatal = (
                f"no workers: {supply.failures} local worker processes in a row "
                f"(the limit is {MAX_START_FAILURES}) ended before their executor was ready; "
                f"the last: {supply.last_failure}"
            )
            logger.error("%s", self._fatal)
            self._request_stop(self._fatal)
            return
        starts = supply.starts_due(now)
        if starts:
            out.append(SpawnWorkers(starts))
        due = supply.next_deadline()
        self._supply_at = math.inf if due is None else due

    def _replan(self, now: float) -> None:
        """Every worker's capacity anew, where the planner's window changed."""
        if not self.planner.due(now):
            return
        inputs = PlanInputs(
            self.scheduler.mean_duration_s(),
            self.scheduler.spread(),
            self.prefetch_cost_s(),
            len(self.registry),
        )
        if not self.planner.replan(inputs, now):
            return
        for info in self.registry.workers():
            self._plan_worker(info)

    def _plan_worker(self, info: WorkerInfo) -> None:
        """``info``'s capacity and refill mark, as the planner has them now."""
        capacity = self.planner.capacity(info.declared, info.threads)
        self.registry.resize(info, capacity, self.planner.refill(capacity, info.threads))
        self._touched.add(info.identity)

    def _executor_gone(self, info: WorkerInfo, exited: ExecutorExited, now: float) -> None:
        """The worker's executor child died or was replaced. What was sent to it is settled
        by how far it got (``last_seq``): the attempt it was running ended as reported; those
        it never took go back to the ready queue (no attempt spent); the results of those it
        finished are still on their way over its own connection, or were lost with it."""
        info.gone = max(info.gone, exited.generation)
        if info.generation == exited.generation:
            self.registry.mark_unready(info, now)  # until its replacement says READY
            self._expire_at = min(self._expire_at, now + self.config.startup_timeout_s)
        # Latest first: follow-ons go back before the attempt they follow is settled.
        for d in sorted(info.in_flight.values(), key=lambda d: d.seq, reverse=True):
            if d.generation != exited.generation:
                continue
            if d.seq > exited.last_seq:
                self._revoking.discard((d.quantum_id, d.attempt))
                self._complete(info, d.quantum_id, d.attempt)
                self._undispatched(d.index)
            elif d.seq == exited.last_seq and exited.running:
                self._complete(info, d.quantum_id, d.attempt)
                if (d.quantum_id, d.attempt) in self._preempting:
                    self._put_back(d)
                else:
                    self._finished(d.index, _ended(d, exited), now)
            elif not d.orphan or d.backstop is None or d.backstop > now + ORPHAN_GRACE_S:
                self.registry.orphan(info, d, now + ORPHAN_GRACE_S)
                self._expire_at = min(self._expire_at, now + ORPHAN_GRACE_S)

    def _executor_unreachable(self, info: WorkerInfo, generation: int, now: float) -> None:
        """The worker's child ``generation`` is gone and its agent has not said how far it
        got: the worker is paused, and what the child had is awaited for as long as a silent
        worker would be, then lost (retried) - unless the agent's report settles it first."""
        if info.generation == generation:
            self.registry.mark_unready(info, now)
            self._expire_at = min(self._expire_at, now + self.config.startup_timeout_s)
        limit = now + self.config.worker_silence_limit_s
        for d in list(info.in_flight.values()):
            if d.generation == generation and not d.orphan:
                self.registry.orphan(info, d, limit)
                self._expire_at = min(self._expire_at, limit)

    def _expire(self, now: float, out: list[Action]) -> None:
        if now < self._expire_at:
            return
        limit, startup = self.config.worker_silence_limit_s, self.config.startup_timeout_s
        for info in self.registry.silent(now, limit, startup):
            silent_s = now - info.last_seen
            why = f"worker {info.worker_id} (pid {info.pid}) silent for {silent_s:.1f}s"
            self._lose_worker(info, why, now, out)
        for info in self.registry.stuck(now, startup):
            why = (
                f"worker {info.worker_id} (pid {info.pid}) had no executor ready "
                f"for {now - info.unready_since:.1f}s"
            )
            self._lose_worker(info, why, now, out)
        for info, d in self.registry.overdue(now):
            if self._complete(info, d.quantum_id, d.attempt) is None:
                continue  # settled as a follow-on of one before it
            self._drop_followers(info, d.seq)
            if d.orphan:
                why = f"its result never arrived from the executor of {info.worker_id}, which died"
                self._lost(d, why)
                continue
            why = "no result within the timeout plus grace; its worker was killed"
            self._lost(d, why, Reason.TIMEOUT)
            why = f"worker {info.worker_id} did not enforce a timeout"
            self._lose_worker(info, why, now, out)
        due = self.registry.next_deadline(limit, startup)
        self._expire_at = math.inf if due is None else due

    def _on_revoked(self, info: WorkerInfo, qid: str, attempt: int) -> None:
        self._revoking.discard((qid, attempt))
        d = self._complete(info, qid, attempt)
        if d is not None:
            self._drop_followers(info, d.seq)
            self._undispatched(d.index)

    def _weigh_chain(self) -> None:
        """Rank the quanta that cannot run beside one another as one chain
        (``Admission.chain``): those of task labels that need more than half a budget, and
        those with requests of their own that do; by depth."""
        if not self.admission.tight or not len(self.graph):
            return
        kinds = as_numpy(self.graph.kind)
        _, first = np.unique(kinds, return_index=True)
        wide = [int(kinds[i]) for i in first.tolist() if self.admission.exclusive(int(i))]
        candidates = set(self.graph.resources)
        if wide:
            candidates.update(np.flatnonzero(np.isin(kinds, wide)).tolist())
        unfinished = [i for i in candidates if not self.state.state(i).terminal]
        if len(unfinished) > _CHAIN_MAX:
            unfinished = []  # not a bottleneck of a few large quanta: ranked by the graph
        chain = self.admission.chain(unfinished, self.graph.topology.depth.__getitem__)
        if chain != self._chain:
            self._chain = chain
            self.scheduler.weigh(chain)

    def _watch_pressure(self, now: float, out: list[Action]) -> None:
        """Memory pressure (``PressureWatch``): admit nothing; if it lasts, stop the most
        recently started quantum (it is put back when its worker reports it ended)."""
        pressed, stop = self.pressure.check(now)
        if pressed and not self._under_pressure:
            logger.warning("memory pressure: %s; starting nothing new", self.pressure.why())
        self._under_pressure = pressed
        if not stop:
            return
        put_back = self.ledger.put_back
        running = [
            (d.sent_at, info, d)
            for info in self.registry.workers()
            if info.in_flight
            for d in [min(info.in_flight.values(), key=lambda q: q.seq)]
            if not d.orphan
            and (d.quantum_id, d.attempt) not in self._preempting
            and put_back.get(d.index, 0) < _MAX_PUT_BACKS  # (then it runs through)
        ]
        if not running:
            return
        _, info, d = max(running, key=lambda r: r[0])
        logger.warning(
            "memory pressure (%s): stopping %s, the most recently started, to run it later",
            self.pressure.why(),
            d.quantum_id,
        )
        self._preempting.add((d.quantum_id, d.attempt))
        out.append(PreemptQuantum(info.identity, d.quantum_id, d.attempt, d.seq))

    def _put_back(self, d: InFlight) -> None:
        """``d`` was stopped under memory pressure: back in the queue, its attempt not
        counted, nor a failure (the report counts it as put back)."""
        self._preempting.discard((d.quantum_id, d.attempt))
        self.ledger.pressured(d.index)
        self._record(d.index, d.attempt, JournalState.RETRY)
        if self.state.requeue(d.index):
            self.scheduler.push(d.index)

    def _count_threads(self) -> None:
        self.admission.workers_changed(sum(max(1, w.threads) for w in self.registry.workers()))
        self._refresh_admission()

    def _refresh_admission(self) -> None:
        """Whether admission must count (``Admission.update_loose``); when it starts to, it
        is told what every worker holds."""
        if self.admission.update_loose():
            for info in self.registry.workers():
                for d in info.in_flight.values():
                    label = self._labels[d.index]
                    vector = self.admission.vector(d.index)
                    self.admission.hold(info.identity, info.threads, d.index, vector, label)

    def _enough_ready(self) -> bool:
        return self.registry.ready_count() >= max(1, self._expected_workers)

    # ------------------------------------------------------------------ dispatch
    def _dispatch(self, now: float, out: list[Action]) -> None:
        if self._stop_reason is not None or self._under_pressure:
            self._released.clear()
            return  # draining, or under memory pressure: nothing new starts
        if self._holding:
            # Hold briefly until every expected local worker is up, so work spreads evenly.
            if not self._enough_ready() and now < self.timings.started + STARTUP_HOLD_S:
                return
            self._holding = False
        self._steal(now, out)
        self._follow(now, out)
        # Children just released go first, most critical first, to the most recently used
        # worker (where their parent ran): chains finish before new ones start, so
        # intermediates are read soon after they are written. Then the scheduler's order
        # (``Scheduler.pop``: what others' outputs wait for first, by critical path); at the
        # end of the run, where the order can still lengthen it (``endgame``), only that.
        released = sorted(self._released, key=self.scheduler.priority, reverse=True)
        self._released.clear()
        # (Not while a chain of quanta that cannot run beside each other sets the pace: then
        # the resources, not the workers, bound the run, and its members' parents go first.)
        endgame = self.scheduler.endgame(self.registry.ready_count(), self.state.unfinished)
        if released and endgame and not self._chain:
            released.clear()
        head, loose = self._head_priority, self.admission.loose
        for child in released:
            if loose:
                info = self.registry.next_free()
                if info is None:
                    break
            else:
                if self.registry.next_free() is None:
                    break
                if head is not None and self.scheduler.priority(child) < head:
                    continue  # a quantum waiting for resources comes first (_dispatch_ready)
                info = self._worker_for(self.admission.vector(child), self._labels[child], now)
            if info is not None and self.scheduler.take(child):
                out.append(self._dispatched(info, child, now))
        self._dispatch_ready(now, out)
        self._follow(now, out)

    def _dispatch_ready(self, now: float, out: list[Action]) -> None:
        """Ready quanta in critical-path order, each to a free worker where it fits. The
        first that fits nowhere is the head: what comes after it goes ahead of it only where
        it does not delay it (``Admission.backfills``); it and those passed over stay ready."""
        passed: list[int] = []
        head: tuple[float, Vector] | None = None  # the head's shadow and what is spare then
        self._waiting = []
        workers = self.registry.ready_count()
        if self.admission.loose:  # (everything fits: the order alone decides)
            self._head_priority = None
            while len(self.scheduler) and (info := self.registry.next_free()) is not None:
                i = self.scheduler.pop(workers)
                if i is None:
                    break
                out.append(self._dispatched(info, i, now))
            return
        if not len(self.scheduler) or self.registry.next_free() is not None:
            # (with no worker free the head is still the head: children released meanwhile
            # must not go ahead of it by the released path)
            self._head_priority = None
        while len(self.scheduler) and self.registry.next_free() is not None:
            i = self.scheduler.pop(workers)
            if i is None:
                break
            vector = self.admission.vector(i)
            info = self._worker_for(vector, self._labels[i], now)
            if info is not None and head is not None:
                ends = now + self._ahead_s(info, now) + self.scheduler.estimate(self._labels[i])
                spare = self.admission.backfills(vector, ends, *head)
                if spare is None:
                    info = None
                else:
                    head = (head[0], spare)
            if info is not None:
                out.append(self._dispatched(info, i, now))
                continue
            passed.append(i)
            if len(passed) <= _WAITING_SHOWN:
                self._waiting.append((i, self.admission.why_not(vector, self._labels[i])))
            if head is None:
                head = self.admission.shadow(vector, self._holding_ends(now))
                self._head_priority = self.scheduler.priority(i)
            if len(passed) >= _BACKFILL_SCAN:
                break
        for i in passed:
            self.scheduler.push(i)

    def _worker_for(self, vector: Vector, label: int, now: float) -> WorkerInfo | None:
        """The free worker ``vector`` fits on now: the first idle one in the registry's order
        (most recently used first), else the busy one that will have run what it holds
        soonest (a quantum queued there starts then), or None."""
        if self.admission.loose:
            return self.registry.next_free()
        best: WorkerInfo | None = None
        best_s = math.inf
        for info in self.registry.free():
            if not self.admission.fits(info.identity, info.threads, vector, label):
                continue
            if not info.in_flight:
                return info
            ahead = self._ahead_s(info, now)
            if ahead < best_s:
                best, best_s = info, ahead
        return best

    def _ahead_s(self, info: WorkerInfo, now: float) -> float:
        """How long until ``info`` has run what it holds, by the durations learned."""
        left = 0.0
        estimate, labels = self.scheduler.estimate, self._labels
        for d in info.in_flight.values():
            left += estimate(labels[d.index])
        first = min((d.sent_at for d in info.in_flight.values()), default=now)
        return max(0.0, left - (now - first))

    def _holding_ends(self, now: float) -> list[tuple[float, bytes]]:
        """When each worker will have run what it holds."""
        return [
            (now + self._ahead_s(info, now), info.identity)
            for info in self.registry.workers()
            if info.in_flight
        ]

    def _follow(self, now: float, out: list[Action]) -> None:
        """Send follow-ons: where a worker's last dispatch is the one unfinished parent of a
        child that would be the most critical quantum ready once it succeeds, that child is
        sent behind it now (one beyond the worker's slots) and starts there without waiting
        for a round trip through the broker."""
        touched, self._touched = self._touched, set()
        if not self._follow_ons:
            return
        for identity in touched:
            info = self.registry.get(identity)
            while info is not None and info.ready and len(info.in_flight) <= info.slots:
                last = self._last_sent(info)
                child = None if last is None else self._follower(last.index)
                if last is None or child is None:
                    break
                out.append(self._dispatched(info, child, now, after=last.seq))

    def _last_sent(self, info: WorkerInfo) -> InFlight | None:
        """The worker's last dispatch, if its current child still holds it (a follow-on may
        go behind it)."""
        for d in info.in_flight.values():
            if d.seq == info.sent:
                ok = d.generation == info.generation and not d.orphan
                return d if ok and (d.quantum_id, d.attempt) not in self._revoking else None
        return None

    def _follower(self, i: int) -> int | None:
        """The most critical child whose one unfinished parent is ``i``, if it outranks
        everything ready."""
        t = self.graph.topology
        lo, hi = t.succ_ptr[i], t.succ_ptr[i + 1]
        if hi - lo > _FOLLOW_SCAN:
            return None
        waiting = self.state.one_parent_left(t.succ[lo:hi])
        if not waiting:
            return None
        priority = self.scheduler.priority
        best = max(waiting, key=priority)  # the first of equals: graph order
        top = self.scheduler.top_priority()
        return best if top is None or priority(best) >= top else None

    def _stealable(self) -> list[tuple[WorkerInfo, InFlight, InFlight]]:
        """(worker, running, queued) where a prefetched quantum waits behind another, when a
        ready worker sits idle that it would fit on and nothing else is ready: the last one
        queued that is not a follow-on of another one there (taking a quantum back drops its
        follow-ons too)."""
        if len(self.scheduler):
            return []
        idle = [w for w in self.registry.workers() if w.ready and not w.in_flight]
        if not idle:
            return []
        out = []
        adm = self.admission
        for info in self.registry.workers():
            if len(info.in_flight) < 2:
                continue
            running, *queued = sorted(info.in_flight.values(), key=lambda d: d.seq)
            seqs = {d.seq for d in info.in_flight.values()}
            head = next((d for d in reversed(queued) if d.after not in seqs), None)
            if head is None or head.orphan or (head.quantum_id, head.attempt) in self._revoking:
                continue
            i, label = head.index, self._labels[head.index]
            if any(adm.fits_moved(info.identity, i, w.identity, w.threads, label) for w in idle):
                out.append((info, running, head))
        return out

    def _steal(self, now: float, out: list[Action]) -> None:
        """Take back a quantum prefetched behind one that has run a while, so an idle worker
        runs it now instead of after it."""
        for info, running, last in self._stealable():
            if now - running.sent_at >= STEAL_AFTER_S:
                self._revoking.add((last.quantum_id, last.attempt))
                out.append(RevokeQuantum(info.identity, last.quantum_id, last.attempt, last.seq))

    def _next_steal(self, now: float) -> float | None:
        return min((r.sent_at + STEAL_AFTER_S for _, r, _ in self._stealable()), default=None)

    # ------------------------------------------------------------------ the end
    def _should_finish(self, now: float, out: list[Action]) -> bool:
        if self.state.finished or self._stop_now:
            return True
        if self._stop_reason is None:
            return False
        if self._let_finish and not self._stop_now:
            return not any(info.in_flight for info in self.registry.workers())
        if self._drain_deadline is None:  # a graceful stop begins: tell every worker
            grace = self.config.shutdown_grace_s
            self._drain_deadline = now + grace
            logger.warning(
                "stopping (%s): %.1fs for running quanta to finish", self._stop_reason, grace
            )
            for info in self.registry.workers():
                out.append(ShutdownWorker(info.identity, self._stop_reason, grace))
        busy = any(info.in_flight for info in self.registry.workers())
        return not busy or now >= self._drain_deadline

    def _finish(self, out: list[Action]) -> None:
        """Cancel what did not end, tell every worker to stop, and say the run is over."""
        cancelled = self._cancelled()
        if self._journal is not None:
            self._journal.flush()
        reason = self._stop_reason or "run complete"
        for info in self.registry.workers():
            out.append(ShutdownWorker(info.identity, reason, 0.0, final=True))
        out.append(StopRun(self._stop_reason, cancelled))
        self._over = True


def _own_kb(result: Result) -> int | None:
    """What the attempt itself used at its peak: its process's peak less what its executor
    held before it (what admission learns; the report keeps the process's peak)."""
    peak, base = result.max_rss_kb, result.base_rss_kb
    # (a measurement at or under the base still measures the label: at least 1 MiB)
    return peak if peak is None or base is None else max(1024, peak - base)


def _ended(d: InFlight, exited: ExecutorExited) -> Result:
    """The result of the attempt ``d`` that an executor child died running."""
    return Result(
        quantum_id=d.quantum_id,
        attempt=d.attempt,
        status=exited.status,
        exit_code=exited.exit_code,
        exc_class=None,
        exc_message=exited.detail,
        reason=exited.reason,
        start_time=exited.start_time,
        end_time=exited.end_time,
        duration_s=max(0.0, exited.end_time - exited.start_time),
        max_rss_kb=exited.max_rss_kb,  # its peak as the agent watched it, if it watched
        base_rss_kb=exited.base_rss_kb,
        log_path=exited.log_path,
    )


def _admission(graph: QuantumGraph, config: ExecutionConfig, labels: array[int]) -> Admission:
    """The run's admission: its budgets, and what quanta request (``broker.core.admission``)."""
    inf = math.inf
    budget = Budget(config.memory_mb or inf, config.cpus or inf, config.resources)
    defaults: Amounts = {}
    if config.memory_per_quantum_mb is not None:
        defaults[MEMORY] = config.memory_per_quantum_mb
    if config.cores_per_quantum is not None:
        defaults[CPUS] = float(config.cores_per_quantum)
    configured = config.label_requests or {}
    by_label = {
        label: {**configured.get(label, {}), **graph.label_resources.get(label, {})}
        for label in graph.labels
    }
    # a quantum of each label (its first), for what the labels request
    _, first = np.unique(np.frombuffer(labels, dtype=np.uint32), return_index=True)
    return Admission(
        budget,
        graph.resources,
        labels.__getitem__,
        graph.labels,
        by_label=by_label,
        defaults=defaults,
        strict=not config.memory_from_host,
        cpus_follow_workers=config.cpus_from_host,
        representatives=first.tolist(),
    )


def check_requests(
    graph: QuantumGraph, config: ExecutionConfig, done: Collection[int] = ()
) -> None:
    """GraphError naming the quanta of ``graph`` (but those ``done``) that ask for more than
    a budget of ``config``: what a run checks before anything starts."""
    _refuse(graph, _admission(graph, config, _label_numbers(graph)), done)


def _label_numbers(graph: QuantumGraph) -> array[int]:
    """The label number of each quantum (into ``graph.labels``)."""
    kind_label = np.array(graph.kind_label, dtype=np.uint32)
    return array("I", kind_label[as_numpy(graph.kind)].tobytes() if len(graph) else b"")


def _refuse(graph: QuantumGraph, admission: Admission, done: Collection[int]) -> None:
    """GraphError naming the quanta that ask for more than a budget, before anything runs
    (one check per task label, and one per quantum with values of its own)."""
    if not len(graph):
        return
    finished = set(done)
    kinds = as_numpy(graph.kind)
    _, first = np.unique(kinds, return_index=True)
    candidates = [int(i) for i in first.tolist()] + list(graph.resources)
    refused = [r for r in admission.refusals(candidates) if r.index not in finished]
    if not refused:
        return
    r = refused[0]
    bad = [graph.ids[x.index] for x in refused]
    if r.index not in graph.resources:  # every quantum of its kind asks the same
        kind = graph.kind[r.index]
        same = np.flatnonzero(kinds == kind).tolist()
        bad = [graph.ids[i] for i in same if i not in finished] + bad[1:]
    raise GraphError(_refusal(graph.ids[r.index], r) + f" (quanta: {names(bad)})", bad)


def _refusal(qid: str, r: Refusal) -> str:
    if r.resource == MEMORY:
        return (
            f"quantum {qid!r} asks for {format_memory(r.asked)} of memory, more than the "
            f"budget of {format_memory(r.budget)} (--memory)"
        )
    if r.resource == CPUS:
        return f"quantum {qid!r} asks for {r.asked:g} cpus, more than the budget of {r.budget:g}"
    if r.budget == 0:
        return (
            f"quantum {qid!r} asks for {r.asked:g} of resource {r.resource!r}, which the run "
            f"does not offer (--resource {r.resource}=N, or Dask workers offering it)"
        )
    return (
        f"quantum {qid!r} asks for {r.asked:g} of resource {r.resource!r}, more than the "
        f"budget of {r.budget:g}"
    )
