"""The zmq driver of the broker core: one ROUTER socket and the local worker pool. Turns frames,
worker deaths and stop requests into core events and carries out the core's actions; keeps no
bookkeeping of quanta itself. Never unpickles what it receives.

Loop: carry out actions -> poll until a frame, a worker death or the core's next deadline
-> translate what arrived into events -> core.step -> heartbeat and progress.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import assert_never

import psutil

from broker.core import BrokerCore, RunTimings
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
    WorkerHeard,
    WorkerJoined,
    WorkerLeft,
    WorkerReady,
)
from broker.core.planner import TransportProfile
from broker.drivers.progress import Progress, ProgressCallback, answer_control
from broker.journal import Journal
from broker.transport.links import Link, LinkHub, link_path_for
from broker.transport.poller import POLLIN, Poller, Waitable
from broker.transport.pool import WorkerPool
from broker.transport.router import Router
from broker.transport.routes import ChildRoutes, Route
from common.codec import AssignFrames, decode, encode
from common.config import ExecutionConfig
from common.errors import ProtocolError
from common.graph import QuantumGraph
from common.protocol import (
    Assign,
    Cancel,
    ExecutorExited,
    Goodbye,
    Heartbeat,
    Hello,
    Message,
    Preempt,
    Ready,
    Refuse,
    Result,
    Revoke,
    Revoked,
    Shutdown,
    StatusReply,
    StatusRequest,
    Welcome,
)
from worker.launch import QUEUE_MAX
from worker.lifecycle import describe_exit

__all__ = ["BrokerServer", "Serving"]

logger = logging.getLogger(__name__)

# A dispatch round trip to a local agent is well under a millisecond: quanta shorter than that
# are sent a few at a time (up to what the agent accepts, ``QUEUE_MAX`` by default).
_LOCAL_TRIP_S = 0.001


def transport_profile(config: ExecutionConfig) -> TransportProfile:
    """What dispatching to an agent costs: a sub-millisecond round trip; a worker holds
    ``1 + prefetch`` quanta, up to ``1 + QUEUE_MAX`` for quanta shorter than the trip; queued
    quanta are cheap to take back (REVOKE), so the order rules apply."""
    lo = 1 + config.prefetch
    return TransportProfile(_LOCAL_TRIP_S, lo, max(lo, 1 + QUEUE_MAX))


@dataclass(frozen=True, slots=True)
class Serving:
    """Where and with what the broker serves: its endpoint, the workers' log directory, the
    pickled (executor, butler) pair, for tcp the CURVE key directory, and the modules that
    pair's classes live in (preloaded with the task modules)."""

    endpoint: str
    log_dir: Path
    executor_blob: bytes
    keys_dir: Path | None = None
    preload: tuple[str, ...] = ()


_HOST_EVERY_S = 0.5  # how often the host's available memory is read


class BrokerServer:
    """Serves one graph to local (spawned) and attached workers until the core says the run
    is over."""

    def __init__(
        self,
        graph: QuantumGraph,
        config: ExecutionConfig,
        serving: Serving,
        *,
        on_progress: ProgressCallback | None = None,
        journal: Journal | None = None,
        done: Collection[int] = (),
    ) -> None:
        self.graph = graph
        self._host_checked = -math.inf
        self._assigns = AssignFrames(graph)
        self.config = config
        self.core = BrokerCore(
            graph,
            config,
            journal=journal,
            done=done,
            follow_ons=True,
            spawns=True,
            transport=transport_profile(config),
        )
        self._serving = serving
        self._drops = DropLog(logger)
        self._requests: deque[Event] = deque()  # from signal handlers and other threads
        self._events: list[Event] = []  # follow-ups of carrying out actions
        self._goodbyes: set[bytes] = set()  # attached workers told the run is over
        self._host = socket.gethostname()  # local agents say HELLO with this host name
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._pool = WorkerPool(
            serving.endpoint,
            config.start_method,
            keys_dir=serving.keys_dir,
            log_level=logging.getLogger().getEffectiveLevel(),
            startup_timeout_s=config.startup_timeout_s,
            # A local agent accepts up to this many queued quanta; how many it is sent is the
            # planner's call, from ``config.prefetch`` up.
            prefetch=max(config.prefetch, QUEUE_MAX),
        )
        # Executor children speak for themselves: a local worker's over a link (``LinkHub``),
        # an attached one's over a ZeroMQ socket of its own.
        self._children = ChildRoutes()
        self._links: LinkHub | None = None
        self._preload = sorted(graph.task_modules() | set(serving.preload))
        self._progress = Progress(on_progress, config.progress_interval_s)

    @property
    def timings(self) -> RunTimings:
        return self.core.timings

    @property
    def fatal(self) -> str | None:
        """Why the run could not go on (no workers could be had), if that happened."""
        return self.core.fatal

    # ------------------------------------------------------------------ control
    def request_stop(self, reason: str, *, graceful: bool = False) -> None:
        """Stop dispatching. Graceful: running quanta get ``shutdown_grace_s`` to finish, then
        the rest is cancelled; otherwise cancel at once. Safe from a signal handler."""
        self._requests.append(StopRequested(reason, graceful))
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"!")
            except OSError:
                pass  # the pipe is full: the loop is waking anyway

    def _close_wake_pipe(self) -> None:
        wake_r, wake_w = self._wake_r, self._wake_w
        self._wake_r = self._wake_w = -1  # request_stop must never write to a reused fd
        os.close(wake_r)
        os.close(wake_w)

    def run(self) -> None:
        """Serve until the run is over; always reaps workers."""
        actions = self.core.start(time.monotonic())
        if self.core.over:  # nothing to run (an empty graph, or a finished run resumed)
            self._close_wake_pipe()
            return
        # Workers are started before this process creates its ZeroMQ context (fork safety);
        # they connect with retries, so binding second is fine.
        for action in actions:
            if isinstance(action, SpawnWorkers):
                self._spawn(action.count)
        actions = [a for a in actions if not isinstance(a, SpawnWorkers)]
        router: Router | None = None
        try:
            self._links = LinkHub(link_path_for(self._serving.endpoint), self._drops)
            router = self._router = Router(
                self._serving.endpoint, self._serving.keys_dir, self._drops
            )
            self._loop(actions)
        finally:
            if not self.core.over:  # the loop failed (or never ran): stop the run in order
                stop = self.core.step([StopRequested("broker error")], time.monotonic())
                if router is not None:
                    self._carry_out(stop)
            if router is not None:
                grace = self.config.shutdown_grace_s
                router.await_goodbyes(self._goodbyes, time.monotonic() + max(2.0, grace))
            self._pool.shutdown(self.config.shutdown_grace_s)
            self.core.timings.workers_started = self._pool.started
            if router is not None:
                router.close(min(1.0, self.config.shutdown_grace_s))
            if self._links is not None:
                self._links.close()
            self._close_wake_pipe()

    # ------------------------------------------------------------------ loop
    def _loop(self, actions: list[Action]) -> None:
        """Serve, starting with ``actions`` (the core's first decisions)."""
        poller = Poller()
        try:
            self._serve(poller, actions)
        finally:
            poller.close()

    def _serve(self, poller: Poller, actions: list[Action]) -> None:
        poller.register(self._router.sock, POLLIN)
        poller.register(self._wake_r, POLLIN)
        assert self._links is not None
        self._links.attach(poller)
        pidfds = set(self._pool.pidfds())
        for fd in pidfds:
            poller.register(fd, POLLIN)
        self._carry_out(actions)
        self._links.flush()
        while not self.core.over:
            now = time.monotonic()
            timeout_s = max(0.0, self._next_wakeup(now) - now)
            if self._router.take_used():
                poller.used(self._router.sock)
            ready = dict(poller.poll(int(timeout_s * 1000) + 1))
            now = time.monotonic()
            events, self._events = self._events, []
            if self._router.sock in ready:
                self._read_frames(now, events)
            self._read_links(ready, events)
            if self._wake_r in ready:
                os.read(self._wake_r, 4096)
            while self._requests:
                events.append(self._requests.popleft())
            exited = pidfds & ready.keys()
            for fd in exited:
                poller.unregister(fd)
                self._worker_exited(fd, events)
            # (a replacement's pidfd may reuse an exited one's number: it must be registered)
            pidfds -= exited
            self._carry_out(self.core.step(events, now))
            self._links.flush()  # the ASSIGNs of this step, one write per child
            self._heartbeat(now)
            self._progress.tick(self.core.status, now)
            current = set(self._pool.pidfds())
            for fd in current - pidfds:
                poller.register(fd, POLLIN)
            pidfds = current

    def _next_wakeup(self, now: float) -> float:
        wake = now + self.config.heartbeat_interval_s
        if self._events or self._requests:
            return now
        deadline = self.core.next_deadline(now)
        if deadline is not None:
            wake = min(wake, deadline)
        progress = self._progress.next_at()
        if progress is not None:
            wake = min(wake, progress)
        return wake

    # ------------------------------------------------------------------ frames -> events
    def _read_frames(self, now: float, events: list[Event]) -> None:
        for identity, msg in self._router.messages():
            if (
                isinstance(msg, ExecutorExited | Revoked)
                and self._children.owner(identity) is None
                and self.core.worker(identity) is not None
            ):
                events.append(WorkerHeard(identity))  # the agent's own report: it is alive
            event = self._event_for(identity, msg, now)
            if event is not None:
                events.append(event)

    def _read_links(self, ready: dict[Waitable, int], events: list[Event]) -> None:
        assert self._links is not None
        for link, frames, alive in self._links.service(ready):
            for frame in frames:
                if link.closed:
                    break  # refused: what else it sent is not read
                try:
                    msg = decode(frame)
                except ProtocolError as e:
                    self._drops.warn("dropping bad frame from %r: %s", link, e)
                    continue
                owner = self._children.owner(link)
                if owner is not None:
                    event = self._child_event(owner, msg)
                elif isinstance(msg, Ready):
                    event = self._child_ready(link, msg)
                else:
                    self._refuse(link, "%s before READY", type(msg).__name__)
                    continue
                if event is not None:
                    events.append(event)
            if not alive:
                self._link_closed(link, events)

    def _link_closed(self, link: Link, events: list[Event]) -> None:
        """A child's link ended (it died or left): its worker is sent nothing more until the
        next child says READY; what it had is settled by its agent's report."""
        current = self._children.closed(link)
        if current is not None:
            events.append(ExecutorUnreachable(*current))

    def _event_for(self, identity: bytes, msg: Message, now: float) -> Event | None:
        """The core event a message stands for; control requests are answered here."""
        owner = self._children.owner(identity)
        if owner is not None:
            return self._child_event(owner, msg)
        match msg:
            case Hello(pid=pid, host=host, slots=slots):
                # (a pid alone could be an attached worker's on another host)
                local = host == self._host and pid in self._pool.pids()
                return WorkerJoined(identity, pid, host, slots, local)
            case Ready():
                return self._child_ready(identity, msg)
            case ExecutorExited():
                self._children.forget(identity, older_than=msg.generation)
                return ExecutorGone(identity, msg)
            case Result():
                return ResultReceived(identity, msg)
            case Revoked(quantum_id=qid, attempt=attempt):
                return QuantumRevoked(identity, qid, attempt)
            case Heartbeat(rss_kb=rss_kb):
                return WorkerHeard(identity, rss_kb)
            case Goodbye(reason=reason):
                self._goodbyes.discard(identity)
                return WorkerLeft(identity, f"worker {self._name(identity)} left: {reason}")
            case StatusRequest() | Cancel():
                reply, stop = answer_control(msg, self.core.status(now))
                self._router.send(identity, reply)
                return stop
            case (
                Welcome() | Assign() | Refuse() | Shutdown() | StatusReply() | Revoke() | Preempt()
            ):
                self._drops.warn(
                    "dropping unexpected %s from %r", type(msg).__name__, identity[:16]
                )
            case _:
                assert_never(msg)
        return None

    def _child_event(self, worker: bytes, msg: Message) -> Event | None:
        """What a message from an executor child's socket means for its worker."""
        match msg:
            case Result():
                return ResultReceived(worker, msg)
            case Revoked(quantum_id=qid, attempt=attempt):
                return QuantumRevoked(worker, qid, attempt)
            case _:
                self._drops.warn(
                    "dropping unexpected %s from an executor of %s", type(msg).__name__, worker
                )
        return None

    def _child_ready(self, child: Route, msg: Ready) -> Event | None:
        """An executor child introduces itself on its link or socket: its worker's quanta
        go there from now on."""
        key = self.core.worker_named(msg.worker_id)
        view = None if key is None else self.core.worker(key)
        if key is None or view is None or view.pid != msg.pid:
            self._refuse(child, "no worker %s with pid %d", msg.worker_id[:100], msg.pid)
            return None
        self._children.attach(key, child, msg.generation)
        return WorkerReady(key, msg.generation)

    def _worker_exited(self, pidfd: int, events: list[Event]) -> None:
        """A local worker process ended: the core settles its quanta and replaces it."""
        reaped = self._pool.reap(pidfd)
        if reaped is None:
            return
        pid, code, _ = reaped
        events.append(ProcessExited(pid, describe_exit(code)))

    # ------------------------------------------------------------------ actions
    def _carry_out(self, actions: list[Action]) -> None:
        for action in actions:
            match action:
                case AdmitWorker(worker=worker, worker_id=worker_id):
                    self._admit(worker, worker_id)
                case RefuseWorker(worker=worker, reason=reason):
                    self._router.refuse(worker, reason)
                case Dispatch():
                    self._send_assign(action)
                case RevokeQuantum(worker=worker, quantum_id=qid, attempt=attempt, seq=seq):
                    self._router.send(worker, Revoke(qid, attempt, seq))
                case PreemptQuantum(worker=worker, quantum_id=qid, attempt=attempt, seq=seq):
                    self._router.send(worker, Preempt(qid, attempt, seq))
                case KillWorker(pid=pid):
                    self._pool.kill(pid)
                case ForgetWorker(worker=worker):
                    self._router.forget(worker)
                    self._children.forget(worker)
                case SpawnWorkers(count=count):
                    self._spawn(count)
                case ShutdownWorker(worker=worker, reason=reason, grace_s=grace, final=final):
                    view = self.core.worker(worker)
                    attached = view is not None and not view.local
                    if self._router.send(worker, Shutdown(reason, grace)) and final and attached:
                        self._goodbyes.add(worker)
                case StopRun():
                    pass
                case _:
                    assert_never(action)

    def _spawn(self, count: int) -> None:
        """Start ``count`` local workers; the core hears of each start (or failure) next step."""
        for n in range(count):
            try:
                pid = self._pool.spawn_one()
            except OSError as e:
                self._events.append(SpawnFailed(str(e), count - n))
                return
            self._events.append(ProcessStarted(pid))

    def _refuse(self, child: Route, why: str, *args: object) -> None:
        """Tell a would-be executor child why not (``why % args``; each ``why`` is a kind of
        its own in the rate-limited log); a link is closed after."""
        if not isinstance(child, Link):
            self._router.refuse(child, why % args)
            return
        self._drops.warn("closing %r: " + why, child, *args)
        self._send_to(child, Refuse(why % args))
        child.flush()
        assert self._links is not None
        self._links.drop(child)

    def _send_to(self, route: Route, msg: Message) -> bool:
        return self._send_frame(route, encode(msg), type(msg).__name__)

    def _send_frame(self, route: Route, frame: bytes, what: str) -> bool:
        if isinstance(route, Link):
            assert self._links is not None
            return self._links.send(route, frame)
        return self._router.send_frame(route, frame, what)

    def _send_assign(self, d: Dispatch) -> None:
        """To the worker's executor child; one that is gone never started it."""
        child = self._children.current(d.worker)
        if child is not None:
            frame = self._assigns.frame(
                d.index, d.attempt, d.timeout_s, d.seq, d.after, d.memory_mb, d.cpus
            )
            if self._send_frame(child[0], frame, "Assign"):
                return
        self._events.append(QuantumRevoked(d.worker, d.quantum_id, d.attempt))
        if child is not None:
            self._events.append(ExecutorUnreachable(d.worker, child[1]))

    def _name(self, identity: bytes) -> str:
        view = self.core.worker(identity)
        return view.worker_id if view is not None else repr(identity[:16])

    def _admit(self, worker: bytes, worker_id: str) -> None:
        c = self.config
        view = self.core.worker(worker)
        local = view is not None and view.local
        self._router.track(worker, time.monotonic())
        self._router.send(
            worker,
            Welcome(
                worker_id=worker_id,
                heartbeat_interval_s=c.heartbeat_interval_s,
                liveness=c.liveness,
                executor=self._serving.executor_blob,
                log_dir=str(self._serving.log_dir),
                preload=self._preload,
                max_quanta_per_executor=c.max_quanta_per_executor,
                max_rss_kb=None if c.max_rss_mb is None else c.max_rss_mb * 1024,
                executor_link=self._links.path if local and self._links is not None else None,
                memory_enforce=c.memory_enforce,
            ),
        )

    def _heartbeat(self, now: float) -> None:
        self._router.heartbeat(self.core.worker_keys(), now, self.config.heartbeat_interval_s)
        if self.config.memory_reserve_mb is not None and now >= self._host_checked + _HOST_EVERY_S:
            # the host's available memory, for the core's pressure watch (~20 us a read)
            self._host_checked = now
            self._events.append(HostMemory(psutil.virtual_memory().available / 2**20))
