"""The broker's event loop: one ROUTER socket, the graph state, the scheduler, the registry and
the local pool, driven by frames, worker deaths and deadlines. Never unpickles what it receives.

Loop: poll until a frame, a worker death or the nearest deadline -> handle frames -> handle
deaths -> expire silent workers and overdue quanta -> dispatch ready quanta -> heartbeat.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import assert_never

import zmq
from zmq.auth.thread import ThreadAuthenticator

from broker.droplog import DropLog
from broker.journal import Journal
from broker.ledger import Ledger
from broker.monitor import Monitor
from broker.pool import WorkerPool
from broker.registry import Dispatch, WorkerInfo, WorkerRegistry
from broker.scheduler import Scheduler
from broker.state import GraphState
from common.codec import decode, encode
from common.config import ExecutionConfig
from common.errors import ProtocolError, ProtocolVersionError
from common.graph import QuantumGraph
from common.keys import load_server_keys
from common.protocol import (
    Assign,
    Cancel,
    Goodbye,
    Heartbeat,
    Hello,
    Message,
    Ready,
    Refuse,
    Result,
    ResultStatus,
    Revoke,
    Revoked,
    Shutdown,
    StatusReply,
    StatusRequest,
    Welcome,
)
from common.report import Reason
from common.status import RunStatus
from worker.lifecycle import describe_exit

__all__ = ["BrokerServer", "RunTimings"]

logger = logging.getLogger(__name__)

_BATCH = 256  # frames handled per wake-up before deadlines get a look
_BACKSTOP_GRACE_S = 5.0  # beyond a quantum's timeout, before the broker kills the worker
_STARTUP_HOLD_S = 10.0  # wait this long at most for every local worker before dispatching
_STEAL_AFTER_S = 0.05  # a prefetched quantum is taken back once the one ahead ran this long


ProgressCallback = Callable[[RunStatus], None]


@dataclass(frozen=True, slots=True)
class Serving:
    """Where and with what the broker serves: its endpoint, the workers' log directory, the
    pickled (executor, butler) pair, and for tcp the CURVE key directory."""

    endpoint: str
    log_dir: Path
    executor_blob: bytes
    keys_dir: Path | None = None


@dataclass(slots=True)
class RunTimings:
    """Monotonic instants of the run (for benchmarks and progress)."""

    started: float = 0.0
    workers_ready: float | None = None
    first_dispatch: float | None = None
    last_result: float | None = None
    workers_started: int = 0  # local worker processes, replacements included
    worker_losses: list[tuple[float, int, str]] = field(default_factory=list)  # (when, pid, why)


class BrokerServer:
    """Serves one graph to local (spawned) and attached workers until every quantum ends."""

    def __init__(
        self,
        graph: QuantumGraph,
        config: ExecutionConfig,
        serving: Serving,
        *,
        on_progress: ProgressCallback | None = None,
        journal: Journal | None = None,
        done: frozenset[str] = frozenset(),
    ) -> None:
        self.graph = graph
        self.config = config
        self.state = GraphState(graph.xgraph)
        labels = {q.id: q.task_label for q in graph.quanta()}
        self.scheduler = Scheduler(graph.xgraph, labels)
        self.registry = WorkerRegistry()
        self.ledger = Ledger(graph, in_process=False)
        self.state.preset_succeeded(set(done))
        self.ledger.resumed(done)
        self._journal = journal
        self._monitor = Monitor(
            graph, labels, self.state, self.scheduler, self.registry, self.ledger
        )
        self.timings = RunTimings()
        self._serving = serving
        self._drops = DropLog(logger)
        self._revoking: set[tuple[str, int]] = set()
        self._stop_reason: str | None = None
        self._stop_now = False
        self._drain_deadline: float | None = None
        self._fatal: str | None = None
        self._last_sent: dict[bytes, float] = {}
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._pool = WorkerPool(
            serving.endpoint,
            config.start_method,
            keys_dir=serving.keys_dir,
            log_level=logging.getLogger().getEffectiveLevel(),
            startup_timeout_s=config.startup_timeout_s,
            prefetch=config.prefetch,
        )
        self._replacements_left = 2 * config.spawn_count + 2
        self._preload = sorted({q.task.partition(":")[0] for q in graph.quanta()})
        self._on_progress = on_progress
        self._next_progress = 0.0

    # ------------------------------------------------------------------ control
    def request_stop(self, reason: str, *, graceful: bool = False) -> None:
        """Stop dispatching. Graceful: running quanta get ``shutdown_grace_s`` to finish, then
        the rest is cancelled; otherwise cancel at once. Safe from a signal handler."""
        if self._stop_reason is None:
            self._stop_reason = reason
        if not graceful:
            self._stop_now = True
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

    @property
    def stop_reason(self) -> str | None:
        return self._stop_reason

    @property
    def fatal(self) -> str | None:
        """Why the run could not go on (no workers could start), if that happened."""
        return self._fatal

    def run(self) -> None:
        """Serve until every quantum ended or a stop was requested; always reaps workers."""
        self.timings.started = time.monotonic()
        if self.state.finished:  # nothing to run (an empty graph, or a finished run resumed)
            self._close_wake_pipe()
            return
        # Workers are started before this process creates its ZeroMQ context (fork safety);
        # they connect with retries, so binding second is fine.
        self._pool.spawn(self.config.spawn_count)
        ctx = zmq.Context()
        router = self._router = ctx.socket(zmq.ROUTER)
        try:
            router.setsockopt(zmq.LINGER, 0)
            router.setsockopt(zmq.ROUTER_MANDATORY, 1)
            auth = self._secure(ctx, router)
            router.bind(self._serving.endpoint)
            self._loop()
        finally:
            self._finish()
            self.timings.workers_started = self._pool.started
            if auth is not None:
                auth.stop()
            # A bounded linger lets the SHUTDOWNs just queued reach attached workers.
            router.close(linger=int(min(1.0, self.config.shutdown_grace_s) * 1000))
            ctx.term()
            self._close_wake_pipe()

    def _secure(
        self, ctx: zmq.Context[zmq.Socket[bytes]], router: zmq.Socket[bytes]
    ) -> ThreadAuthenticator | None:
        """tcp: CURVE with a ZAP allow-list of worker keys; ipc relies on its 0700 directory."""
        if self._serving.keys_dir is None:
            return None
        keys = load_server_keys(self._serving.keys_dir)
        auth = ThreadAuthenticator(ctx)
        auth.start()
        auth.configure_curve(domain="*", location=str(keys.allowed_dir))
        router.setsockopt(zmq.CURVE_SERVER, 1)
        router.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
        router.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
        return auth

    # ------------------------------------------------------------------ loop
    def _loop(self) -> None:
        for qid in self.state.initial_ready():
            self.scheduler.push(qid)
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        pidfds = set(self._pool.pidfds())
        for fd in pidfds:
            poller.register(fd, zmq.POLLIN)
        while not self.state.finished and not self._stop_now:
            now = time.monotonic()
            if self._stop_reason is not None and self._drained(now):
                break
            timeout_s = max(0.0, self._next_wakeup(now) - now)
            events = dict(poller.poll(int(timeout_s * 1000) + 1))
            now = time.monotonic()
            if self._router in events:
                self._handle_frames(now)
            if self._wake_r in events:
                os.read(self._wake_r, 4096)
            for fd in pidfds & events.keys():
                poller.unregister(fd)
                self._handle_worker_exit(fd, now)
            self._expire(now)
            self._dispatch(now)
            self._heartbeat(now)
            self._report_progress(now)
            if self._journal is not None:
                self._journal.flush_if_due(now)
            current = set(self._pool.pidfds())
            for fd in current - pidfds:
                poller.register(fd, zmq.POLLIN)
            pidfds = current

    def _drained(self, now: float) -> bool:
        """During a graceful stop: True once nothing runs or the grace is over."""
        if self._drain_deadline is None:
            grace = self.config.shutdown_grace_s
            self._drain_deadline = now + grace
            logger.warning(
                "stopping (%s): %.1fs for running quanta to finish", self._stop_reason, grace
            )
            for info in self.registry.workers():
                self._send(info.identity, Shutdown(reason=self._stop_reason or "", grace_s=grace))
        busy = any(info.in_flight for info in self.registry.workers())
        return not busy or now >= self._drain_deadline

    def _next_wakeup(self, now: float) -> float:
        wake = now + self.config.heartbeat_interval_s
        if self._drain_deadline is not None:
            wake = min(wake, self._drain_deadline)
        deadline = self.registry.next_deadline(self.config.worker_silence_limit_s)
        if deadline is not None:
            wake = min(wake, deadline)
        if self._on_progress is not None:
            wake = min(wake, self._next_progress)
        if self._holding(now):
            wake = min(wake, self.timings.started + _STARTUP_HOLD_S)
        return wake

    # ------------------------------------------------------------------ frames
    def _handle_frames(self, now: float) -> None:
        router = self._router
        for _ in range(_BATCH):
            # EVENTS, not recv-until-EAGAIN: an exception per wake-up costs more than the check.
            if not int(router.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                return
            frames = router.recv_multipart(zmq.NOBLOCK)
            if len(frames) != 2:
                self._drops.warn("dropping a message of %d frames (expected 2)", len(frames))
                continue
            identity, payload = frames
            try:
                msg = decode(payload)
            except ProtocolVersionError as e:
                self._refuse(identity, f"{e}; upgrade or downgrade the worker")
                continue
            except ProtocolError as e:
                self._drops.warn("dropping bad frame from %r: %s", identity[:16], e)
                continue
            info = self.registry.get(identity)
            if info is None:
                self._on_stranger(identity, msg, now)
                continue
            self.registry.seen(info, now)
            self._on_message(info, msg, now)

    def _on_stranger(self, identity: bytes, msg: Message, now: float) -> None:
        """A peer that is not a registered worker: a new worker or a control client."""
        match msg:
            case Hello():
                self._register(identity, msg, now)
            case StatusRequest():
                self._send(identity, StatusReply(self.status(now).to_dict()))
            case Cancel(abort=abort):
                logger.warning("%s requested by a control client", "abort" if abort else "drain")
                self.request_stop("cancelled by request", graceful=not abort)
                self._send(identity, StatusReply(self.status(now).to_dict()))
            case _:
                self._drops.warn(
                    "dropping %s from unknown worker %r", type(msg).__name__, identity[:16]
                )

    def _on_message(self, info: WorkerInfo, msg: Message, now: float) -> None:
        match msg:
            case Result():
                self._on_result(info, msg, now)
            case Ready():
                self.registry.mark_ready(info)
                ready = self.registry.ready_count()
                if self.timings.workers_ready is None and ready >= max(1, self.config.spawn_count):
                    self.timings.workers_ready = now
            case Revoked(quantum_id=qid, attempt=attempt):
                self._on_revoked(info, qid, attempt)
            case Heartbeat():
                pass
            case Goodbye(reason=reason):
                self._lose_worker(info, f"worker {info.worker_id} left: {reason}", now)
            case Hello():
                logger.warning("duplicate HELLO from %s ignored", info.worker_id)
            case (
                Welcome()
                | Assign()
                | Refuse()
                | Shutdown()
                | StatusRequest()
                | StatusReply()
                | Cancel()
                | Revoke()
            ):
                logger.warning("unexpected %s from %s dropped", type(msg).__name__, info.worker_id)
            case _:
                assert_never(msg)

    def _refuse(self, identity: bytes, reason: str) -> None:
        self._drops.warn("refusing worker %r: %s", identity[:16], reason)
        self._send(identity, Refuse(reason=reason))

    def _register(self, identity: bytes, hello: Hello, now: float) -> None:
        local = hello.pid in self._pool.pids()
        info = self.registry.add(identity, hello.pid, hello.host, hello.slots, local=local, now=now)
        logger.info(
            "worker %s registered (pid %d on %s, %s)",
            info.worker_id,
            hello.pid,
            hello.host,
            "local" if local else "attached",
        )
        self._send(
            identity,
            Welcome(
                worker_id=info.worker_id,
                heartbeat_interval_s=self.config.heartbeat_interval_s,
                liveness=self.config.liveness,
                executor=self._serving.executor_blob,
                log_dir=str(self._serving.log_dir),
                preload=self._preload,
                max_quanta_per_executor=self.config.max_quanta_per_executor,
                max_rss_kb=None
                if self.config.max_rss_mb is None
                else self.config.max_rss_mb * 1024,
            ),
        )

    def _send(self, identity: bytes, msg: Message) -> bool:
        try:
            self._router.send_multipart([identity, encode(msg)], zmq.NOBLOCK)
        except zmq.ZMQError as e:  # EHOSTUNREACH (ROUTER_MANDATORY) or a full pipe
            self._drops.warn("cannot send %s to %r: %s", type(msg).__name__, identity[:16], e)
            return False
        if identity in self._last_sent or self.registry.get(identity) is not None:
            self._last_sent[identity] = time.monotonic()
        return True

    # ------------------------------------------------------------------ results
    def _on_result(self, info: WorkerInfo, result: Result, now: float) -> None:
        if self.registry.complete(info, result.quantum_id, result.attempt) is None:
            logger.warning(
                "ignoring result for %s attempt %d from %s: not in flight there",
                result.quantum_id,
                result.attempt,
                info.worker_id,
            )
            return
        self.timings.last_result = now
        self.ledger.result(result)
        self._record(result.quantum_id, result.attempt, str(result.status))
        qid = result.quantum_id
        match result.status:
            case ResultStatus.SUCCESS:
                self.scheduler.learn(self.graph.quantum(qid).task_label, result.duration_s)
                for child in self.state.succeed(qid):
                    self.scheduler.push(child)
            case ResultStatus.TIMEOUT:
                self._fail(qid, f"timed out: {result.exc_message}", timed_out=True)
            case ResultStatus.FAILURE:
                self._fail(qid, self.ledger.describe(qid))
                if result.stop_run:
                    self.request_stop(f"{qid} failed in a way that stops the run")

    def _fail(self, qid: str, what: str, *, timed_out: bool = False) -> None:
        skipped = self.state.fail(qid, timed_out=timed_out)
        for s in skipped:
            self.scheduler.discard(s)
        logger.warning("quantum %s; %d descendant(s) skipped", what, len(skipped))
        if self.config.fail_fast:
            self.request_stop(f"fail-fast: {what}")

    # ------------------------------------------------------------------ losses
    def _lose_worker(self, info: WorkerInfo, why: str, now: float) -> None:
        """Forget a worker: retry or fail what it ran, kill it if local, replace it."""
        for d in self.registry.remove(info):
            self._requeue_or_fail(d, why)
        self._last_sent.pop(info.identity, None)
        if info.local:
            self._pool.kill(info.pid)
        self.timings.worker_losses.append((now, info.pid, why))
        logger.warning("%s", why)

    def _requeue_or_fail(self, d: Dispatch, why: str) -> None:
        if self._stop_reason is not None:
            return  # stopping: it stays unfinished and is cancelled at the end
        if d.attempt <= self.config.retries:
            logger.warning("re-dispatching %s (attempt %d lost: %s)", d.quantum_id, d.attempt, why)
            self.state.requeue(d.quantum_id)
            self.scheduler.push(d.quantum_id)
            return
        self.ledger.lost(d.quantum_id, Reason.WORKER_LOST, why, time.time())
        self._record(d.quantum_id, d.attempt, "failure")
        self._fail(d.quantum_id, f"{d.quantum_id} lost with its worker: {why}")

    def _handle_worker_exit(self, pidfd: int, now: float) -> None:
        reaped = self._pool.reap(pidfd)
        if reaped is None:
            return
        pid, code = reaped
        info = self.registry.by_pid(pid)
        if info is not None:
            self._lose_worker(
                info, f"worker {info.worker_id} (pid {pid}) {describe_exit(code)}", now
            )
        elif any(pid == lost_pid for _, lost_pid, _ in self.timings.worker_losses):
            logger.info("lost worker process %d reaped (%s)", pid, describe_exit(code))
        else:
            logger.warning("worker process %d %s before registering", pid, describe_exit(code))
        if self.state.finished or self._stop_reason is not None:
            return
        if self._replacements_left > 0:
            self._replacements_left -= 1
            self._pool.spawn(1)
        elif len(self.registry) == 0 and len(self._pool) == 0:
            self._fatal = "every local worker died and the replacement budget is spent"
            self.request_stop(self._fatal)

    def _expire(self, now: float) -> None:
        for info in self.registry.silent(now, self.config.worker_silence_limit_s):
            if not info.ready and now - info.last_seen < self.config.startup_timeout_s:
                continue  # still importing its task modules: it heartbeats once it is up
            self._lose_worker(
                info,
                f"worker {info.worker_id} (pid {info.pid}) silent for {now - info.last_seen:.1f}s",
                now,
            )
        for info, d in self.registry.overdue(now):
            self.registry.complete(info, d.quantum_id, d.attempt)
            why = "no result within the timeout plus grace; its worker was killed"
            self.ledger.lost(d.quantum_id, Reason.TIMEOUT, why, time.time(), exit_code=None)
            self._record(d.quantum_id, d.attempt, "timeout")
            self._fail(d.quantum_id, f"{d.quantum_id} timed out: {why}", timed_out=True)
            self._lose_worker(info, f"worker {info.worker_id} did not enforce a timeout", now)

    # ------------------------------------------------------------------ dispatch
    def _holding(self, now: float) -> bool:
        """Hold dispatch briefly until every local worker is up, so work spreads evenly."""
        return (
            self.timings.workers_ready is None
            and now < self.timings.started + _STARTUP_HOLD_S
            and self.registry.ready_count() < self.config.spawn_count
        )

    def _steal(self, now: float) -> None:
        """An idle worker while nothing is ready: take back a quantum prefetched behind one
        that has run for a while on another worker, so it runs now instead of after it."""
        if len(self.scheduler) or not any(
            w.ready and not w.in_flight for w in self.registry.workers()
        ):
            return
        for info in self.registry.workers():
            if len(info.in_flight) < 2:
                continue
            running, *queued = sorted(info.in_flight.values(), key=lambda d: d.sent_at)
            last = queued[-1]
            key = (last.quantum_id, last.attempt)
            if now - running.sent_at >= _STEAL_AFTER_S and key not in self._revoking:
                self._revoking.add(key)
                self._send(info.identity, Revoke(quantum_id=key[0], attempt=key[1]))

    def _on_revoked(self, info: WorkerInfo, qid: str, attempt: int) -> None:
        self._revoking.discard((qid, attempt))
        if self.registry.complete(info, qid, attempt) is None:
            return  # not in flight there (any more): nothing to take back
        self.ledger.undispatched(qid)
        self.state.requeue(qid)
        self.scheduler.push(qid)

    def _dispatch(self, now: float) -> None:
        if self._holding(now) or self._stop_reason is not None:
            return
        self._steal(now)
        while len(self.scheduler) and (info := self.registry.next_free()) is not None:
            qid = self.scheduler.pop()
            if qid is None:
                return
            q = self.graph.quantum(qid)
            attempt = self.ledger.dispatched(qid, info.worker_id, time.time())
            self._record(qid, attempt, "running")
            timeout = q.timeout_s if q.timeout_s is not None else self.config.timeout_s
            # A prefetched quantum starts after those ahead of it on the worker.
            ahead = sum((d.backstop or now) - now for d in info.in_flight.values())
            backstop = None if timeout is None else now + ahead + timeout + _BACKSTOP_GRACE_S
            self.state.start(qid)
            self.registry.assign(info, Dispatch(qid, attempt, now, backstop))
            if self.timings.first_dispatch is None:
                self.timings.first_dispatch = now
            if not self._send(info.identity, Assign(quantum=q, attempt=attempt, timeout_s=timeout)):
                self._lose_worker(info, f"worker {info.worker_id} unreachable", now)

    def status(self, now: float) -> RunStatus:
        t = self.timings
        busy = now - t.first_dispatch if t.first_dispatch is not None else 0.0
        return self._monitor.snapshot(now, now - t.started, busy, self._stop_reason)

    def _report_progress(self, now: float) -> None:
        if self._on_progress is None or now < self._next_progress:
            return
        self._next_progress = now + self.config.progress_interval_s
        self._on_progress(self.status(now))

    def _record(self, qid: str, attempt: int, state: str) -> None:
        if self._journal is not None:
            self._journal.record(qid, attempt, state)

    def _heartbeat(self, now: float) -> None:
        interval = self.config.heartbeat_interval_s
        for info in self.registry.workers():
            if now - self._last_sent.get(info.identity, 0.0) >= interval:
                self._send(info.identity, Heartbeat())

    # ------------------------------------------------------------------ end
    def _finish(self) -> None:
        """Cancel what did not end, tell workers to stop, reap local ones on one deadline."""
        cancelled = self.state.cancel()
        for qid in cancelled:
            self._record(qid, self.ledger.records[qid].attempts, "cancelled")
        if self._journal is not None:
            self._journal.flush()
        if cancelled:
            logger.warning("%d quanta cancelled (%s)", len(cancelled), self._stop_reason)
        waiting = set()
        for info in self.registry.workers():
            reason = self._stop_reason or "run complete"
            if self._send(info.identity, Shutdown(reason=reason, grace_s=0.0)) and not info.local:
                waiting.add(info.identity)
        self._await_goodbyes(waiting, time.monotonic() + max(2.0, self.config.shutdown_grace_s))
        self._pool.shutdown(self.config.shutdown_grace_s)

    def _await_goodbyes(self, waiting: set[bytes], deadline: float) -> None:
        """Attached workers acknowledge SHUTDOWN with GOODBYE: closing the socket earlier
        would drop the SHUTDOWN still queued to a worker busy starting its executor."""
        while waiting and (left := deadline - time.monotonic()) > 0:
            if not self._router.poll(int(left * 1000) + 1):
                break
            identity, *rest = self._router.recv_multipart()
            try:
                said_goodbye = len(rest) == 1 and isinstance(decode(rest[0]), Goodbye)
            except ProtocolError:
                said_goodbye = False
            if said_goodbye:
                waiting.discard(identity)
        if waiting:
            logger.warning("%d attached worker(s) did not acknowledge SHUTDOWN", len(waiting))
