"""The worker agent: owns the DEALER socket, heartbeats, the running quantum's deadline and the
executor child. Never runs user code, so its heartbeats never stall behind a busy task.

Loop: poll (socket, child pipe, child exit) until the nearest deadline -> handle broker frames
-> handle the child's result or death -> enforce deadlines (timeout, broker silence, parent).
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.context
import os
import signal
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from types import FrameType
from typing import assert_never

import zmq

from common.codec import Peek, decode, encode, peek
from common.errors import ProtocolError
from common.keys import load_client_keys
from common.protocol import (
    Assign,
    Cancel,
    Goodbye,
    Heartbeat,
    Hello,
    Message,
    MessageType,
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
from worker.capture import keep_scratch, scratch_path
from worker.child import child_main
from worker.lifecycle import describe_exit, die_with_parent, kill_group, oom_kills, rss_kb
from worker.runner import log_path_for

__all__ = ["AgentConfig", "WorkerAgent", "agent_main"]

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_REFUSED, EXIT_BROKER_LOST, EXIT_NO_BROKER = 0, 3, 4, 5
_PRELOAD = ["worker.child", "worker.executor", "common.butler", "common.codec"]
_TIMEOUT_EXIT_CODE = -signal.SIGKILL


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """``parent_pid``: exit when that process is gone (local workers spawned by a broker)."""

    endpoint: str
    parent_pid: int | None = None
    startup_timeout_s: float = 60.0
    log_level: int = logging.WARNING
    prefetch: int = 1  # quanta queued here behind the running one, to hide the round trip
    keys_dir: Path | None = None  # CURVE keys for a tcp endpoint (RUN_DIR/curve)


@dataclass(slots=True)
class _Running:
    job: Peek
    deadline: float | None
    started: float


class WorkerAgent:
    """One worker: handshake, then relay ASSIGN to the executor child and RESULT back."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self._stop_reason: str | None = None
        self._mp = multiprocessing.get_context("forkserver")
        self._child: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._running: _Running | None = None
        self._welcome: Welcome | None = None
        self._ready_sent = False
        self._queued: deque[tuple[Peek, bytes]] = deque()
        self._child_quanta = 0  # quanta the current executor child has run
        self._child_generation = 0
        self._oom_baseline: int | None = None
        self._draining_until: float | None = None  # stopping once the running quantum ends
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._poller = zmq.Poller()
        self._last_broker = self._next_heartbeat = time.monotonic()

    # ------------------------------------------------------------------ lifecycle
    def request_stop(self, reason: str) -> None:
        """Safe from a signal handler: only sets a flag the loop reads."""
        self._stop_reason = reason

    def run(self) -> int:
        try:
            self._connect()
            code = self._handshake()
            if code != EXIT_OK or self._welcome is None:
                return code
            # The forkserver imports the task modules once, so a replacement child (after a
            # timeout, a crash or recycling) starts with them loaded, in milliseconds.
            self._mp.set_forkserver_preload(_PRELOAD + self._welcome.preload)
            self._start_child()
            return self._loop()
        finally:
            self._close()

    def _connect(self) -> None:
        s = self._sock
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.IMMEDIATE, 1)
        s.setsockopt(zmq.RECONNECT_IVL, 20)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)  # exponential backoff while no broker is up
        if self.config.keys_dir is not None:
            keys = load_client_keys(self.config.keys_dir)
            s.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
            s.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
            s.setsockopt(zmq.CURVE_SERVERKEY, keys.server_public)
        s.connect(self.config.endpoint)
        self._poller.register(s, zmq.POLLIN)

    def _handshake(self) -> int:
        deadline = time.monotonic() + self.config.startup_timeout_s
        slots = 1 + self.config.prefetch
        hello = encode(Hello(pid=os.getpid(), host=socket.gethostname(), slots=slots))
        # IMMEDIATE: the HELLO waits until a connection exists, so it is never queued to nowhere;
        # it waits in short steps so a dead parent is noticed while no broker answers.
        self._sock.setsockopt(zmq.SNDTIMEO, 500)
        while True:
            try:
                self._sock.send(hello)
                break
            except zmq.Again:
                if self._parent_gone() or time.monotonic() > deadline:
                    logger.error(
                        "no broker at %s within %.0fs",
                        self.config.endpoint,
                        self.config.startup_timeout_s,
                    )
                    return EXIT_NO_BROKER
        self._sock.setsockopt(zmq.SNDTIMEO, -1)
        while (left := deadline - time.monotonic()) > 0 and self._stop_reason is None:
            if self._parent_gone():
                return EXIT_NO_BROKER
            if not self._sock.poll(int(min(left, 0.5) * 1000)):
                continue
            msg = self._decode(self._sock.recv())
            match msg:
                case Welcome():
                    self._welcome = msg
                    self._last_broker = time.monotonic()
                    logger.info("registered as %s", msg.worker_id)
                    return EXIT_OK
                case Refuse(reason=reason):
                    logger.error("broker refused this worker: %s", reason)
                    return EXIT_REFUSED
                case Shutdown():
                    return EXIT_OK
                case _:
                    logger.warning("ignoring %s before WELCOME", type(msg).__name__)
        logger.error("broker at %s did not answer HELLO", self.config.endpoint)
        return EXIT_NO_BROKER

    def _close(self) -> None:
        pid = self._child.pid if self._child is not None else None
        self._stop_child()
        if pid is not None and self._welcome is not None:
            scratch_path(Path(self._welcome.log_dir), pid).unlink(missing_ok=True)
        self._sock.close(linger=0)
        self._ctx.term()

    # ------------------------------------------------------------------ executor child
    def _start_child(self) -> None:
        assert self._welcome is not None
        ours, theirs = self._mp.Pipe(duplex=True)
        w = self._welcome
        child = self._mp.Process(
            target=child_main,
            args=(theirs, w.executor, w.log_dir, w.preload, os.getpid()),
            name="zmpexec-executor",
            daemon=False,
        )
        child.start()
        theirs.close()
        self._child, self._conn = child, ours
        self._oom_baseline = oom_kills(os.getpid())  # the child shares our memory cgroup
        self._child_quanta = 0
        self._child_generation += 1
        self._poller.register(ours.fileno(), zmq.POLLIN)
        self._poller.register(child.sentinel, zmq.POLLIN)

    def _stop_child(self) -> None:
        child, conn = self._child, self._conn
        self._child = self._conn = None
        if child is None or conn is None:
            return
        self._poller.unregister(conn.fileno())
        self._poller.unregister(child.sentinel)
        if child.pid is not None and child.exitcode is None:
            kill_group(child.pid)
        child.join(5.0)
        conn.close()
        child.close()

    def _replace_child(self) -> None:
        self._stop_child()
        if self._stop_reason is None:
            self._start_child()
            self._start_next()

    # ------------------------------------------------------------------ main loop
    def _loop(self) -> int:
        assert self._welcome is not None
        interval = self._welcome.heartbeat_interval_s
        silence_limit = interval * self._welcome.liveness
        while self._stop_reason is None:
            now = time.monotonic()
            wake = min(self._next_heartbeat, self._last_broker + silence_limit, now + interval)
            if self._running is not None and self._running.deadline is not None:
                wake = min(wake, self._running.deadline)
            if self._draining_until is not None:
                wake = min(wake, self._draining_until)
            events = dict(self._poller.poll(int(max(0.0, wake - now) * 1000)))
            if self._sock in events:
                self._drain_socket()
            # A child replaced while handling these events frees fds that a new child may
            # reuse: its events belong to the old one, so they are not looked at again.
            generation = self._child_generation
            if self._conn is not None and self._conn.fileno() in events:
                self._read_child()
            if (
                generation == self._child_generation
                and self._child is not None
                and self._child.sentinel in events
            ):
                self._child_exited()
            now = time.monotonic()
            self._enforce_deadlines(now, silence_limit)
            if now >= self._next_heartbeat:
                self._send(Heartbeat())
        if self._stop_reason == "broker lost":
            return EXIT_BROKER_LOST
        # GOODBYE also acknowledges a SHUTDOWN: the broker waits for it before it closes.
        self._send(Goodbye(reason=self._stop_reason or "stopping"))
        return EXIT_OK

    def _enforce_deadlines(self, now: float, silence_limit: float) -> None:
        if self._draining_until is not None and now >= self._draining_until:
            self._stop_reason = "shutdown"  # the running quantum is killed on the way out
        r = self._running
        if r is not None and r.deadline is not None and now >= r.deadline:
            pid = self._child.pid if self._child is not None else None
            self._stop_child()  # kills its process group: the task's own children too
            message = f"timed out after {r.job.timeout_s:g}s; executor killed"
            self._report_end(
                r, ResultStatus.TIMEOUT, _TIMEOUT_EXIT_CODE, Reason.TIMEOUT, message, pid
            )
            self._replace_child()
        if now - self._last_broker > silence_limit:
            logger.error("broker silent for %.1fs: exiting", now - self._last_broker)
            self._stop_reason = "broker lost"
        if self._parent_gone():
            logger.error("parent process %d is gone: exiting", self.config.parent_pid)
            self._stop_reason = "parent gone"

    def _parent_gone(self) -> bool:
        parent = self.config.parent_pid
        return parent is not None and os.getppid() != parent

    def _drain_socket(self) -> None:
        # EVENTS, not recv-until-EAGAIN: an exception per wake-up costs more than the check.
        while self._stop_reason is None and int(self._sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            frame = self._sock.recv(zmq.NOBLOCK)
            self._last_broker = time.monotonic()
            try:
                # ASSIGN is relayed verbatim; only the executor child decodes it fully.
                job = peek(frame)
            except ProtocolError as e:
                logger.error("dropping bad frame from broker: %s", e)
                continue
            if job is not None and job.kind is MessageType.ASSIGN:
                self._start_quantum(job, frame)
                continue
            msg = self._decode(frame)
            match msg:
                case Assign():
                    logger.error("dropping malformed ASSIGN")
                case Shutdown(reason=reason, grace_s=grace):
                    logger.info("broker asked to shut down (%s), grace %.1fs", reason, grace)
                    self._queued.clear()
                    if grace > 0 and self._running is not None:
                        self._draining_until = time.monotonic() + grace
                    else:
                        self._stop_reason = "shutdown"
                case Revoke(quantum_id=qid, attempt=attempt):
                    self._revoke(qid, attempt)
                case Heartbeat() | None:
                    pass
                case Refuse(reason=reason):
                    logger.error("broker refused this worker: %s", reason)
                    self._stop_reason = "refused"
                case (
                    Hello()
                    | Welcome()
                    | Ready()
                    | Result()
                    | Goodbye()
                    | StatusRequest()
                    | StatusReply()
                    | Cancel()
                    | Revoked()
                ):
                    logger.warning("unexpected %s from broker, dropped", type(msg).__name__)
                case _:
                    assert_never(msg)

    def _revoke(self, quantum_id: str, attempt: int) -> None:
        """Drop a queued quantum the broker takes back; a started one runs on (no answer)."""
        for entry in list(self._queued):
            job = entry[0]
            if (job.quantum_id, job.attempt) == (quantum_id, attempt):
                self._queued.remove(entry)
                self._send(Revoked(quantum_id=quantum_id, attempt=attempt))
                return

    def _start_quantum(self, job: Peek, frame: bytes) -> None:
        """Hand a quantum to the child, or queue it (prefetch) while another runs."""
        if self._running is not None or self._conn is None:
            if len(self._queued) < self.config.prefetch:
                self._queued.append((job, frame))
                return
            logger.error("ASSIGN %s beyond this worker's slots: refusing", job.quantum_id)
            self._send_result_for(
                job, ResultStatus.FAILURE, None, Reason.WORKER_LOST, "worker was busy", time.time()
            )
            return
        now = time.monotonic()
        deadline = now + job.timeout_s if job.timeout_s is not None else None
        self._running = _Running(job, deadline, time.time())
        self._conn.send_bytes(frame)

    def _read_child(self) -> bool:
        """Relay one result from the child; False at end of file (the child is gone)."""
        assert self._conn is not None
        try:
            frame = self._conn.recv_bytes()
        except (EOFError, OSError):
            return False  # the child died; its sentinel reports how
        try:
            result = peek(frame)
            if result is None and isinstance(decode(frame), Ready):
                if not self._ready_sent:  # a replacement child needs no new announcement
                    self._ready_sent = True
                    self._send_frame(frame)
                return True
        except ProtocolError as e:
            logger.error("executor child sent a bad frame: %s", e)
            return True
        r = self._running
        if (
            result is None
            or result.kind is not MessageType.RESULT
            or r is None
            or (result.quantum_id, result.attempt) != (r.job.quantum_id, r.job.attempt)
        ):
            logger.warning("dropping stale result from executor child: %r", result)
            return True
        self._running = None
        self._child_quanta += 1
        if self._draining_until is not None:
            self._send_frame(frame)
            self._stop_reason = "shutdown"
            return False
        if self._should_recycle():
            self._send_frame(frame)
            self._replace_child()  # starts the next queued quantum on the fresh child
            return False
        self._start_next()  # the child starts the next quantum before the broker hears back
        self._send_frame(frame)
        return True

    def _oom_killed(self) -> bool:
        """The kernel OOM-killed something in our memory cgroup since the child started."""
        now, before = oom_kills(os.getpid()), self._oom_baseline
        return now is not None and before is not None and now > before

    def _should_recycle(self) -> bool:
        """Replace the child after N quanta or when it has grown past the RSS limit."""
        assert self._welcome is not None and self._child is not None
        w = self._welcome
        if (
            w.max_quanta_per_executor is not None
            and self._child_quanta >= w.max_quanta_per_executor
        ):
            return True
        if w.max_rss_kb is not None and self._child.pid is not None:
            rss = rss_kb(self._child.pid)
            if rss is not None and rss > w.max_rss_kb:
                logger.info("executor child uses %d KiB > %d KiB: replacing it", rss, w.max_rss_kb)
                return True
        return False

    def _start_next(self) -> None:
        if self._queued and self._running is None and self._conn is not None:
            self._start_quantum(*self._queued.popleft())

    def _child_exited(self) -> None:
        assert self._child is not None and self._conn is not None
        child = self._child
        # A result written just before exiting still counts.
        while self._conn.poll(0) and self._read_child():
            pass
        if self._child is not child:
            return  # that result recycled the child already
        self._child.join(1.0)
        code = self._child.exitcode if self._child.exitcode is not None else -signal.SIGKILL
        r = self._running
        if r is not None:
            reason = Reason.SIGNAL if code < 0 else Reason.EXIT_CODE
            message = f"executor process {describe_exit(code)}"
            if code == -signal.SIGKILL and self._oom_killed():
                reason = Reason.OUT_OF_MEMORY
                message += " by the kernel's out-of-memory killer"
            self._report_end(r, ResultStatus.FAILURE, code, reason, message, self._child.pid)
        elif code != 0:
            logger.warning("idle executor child %s; replacing it", describe_exit(code))
        self._replace_child()

    # ------------------------------------------------------------------ sending
    def _report_end(
        self,
        r: _Running,
        status: ResultStatus,
        code: int | None,
        reason: Reason,
        message: str,
        child_pid: int | None,
    ) -> None:
        self._running = None
        self._send_result_for(r.job, status, code, reason, message, r.started, child_pid)

    def _send_result_for(
        self,
        job: Peek,
        status: ResultStatus,
        code: int | None,
        reason: Reason,
        message: str,
        started: float,
        child_pid: int | None = None,
    ) -> None:
        assert self._welcome is not None
        now = time.time()
        log_dir = Path(self._welcome.log_dir)
        log = log_path_for(log_dir, job.quantum_id, job.attempt)
        if child_pid is not None:  # what the task wrote before it died is its log
            keep_scratch(scratch_path(log_dir, child_pid), log)
        self._send(
            Result(
                quantum_id=job.quantum_id,
                attempt=job.attempt,
                status=status,
                exit_code=code,
                exc_class=None,
                exc_message=message,
                reason=reason,
                start_time=started,
                end_time=now,
                duration_s=max(0.0, now - started),
                max_rss_kb=None,
                log_path=str(log) if log.exists() else None,
            )
        )

    def _send(self, msg: Message) -> None:
        self._send_frame(encode(msg))

    def _send_frame(self, frame: bytes) -> None:
        try:
            self._sock.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            logger.warning("broker unreachable; message dropped")
        self._next_heartbeat = time.monotonic() + (
            self._welcome.heartbeat_interval_s if self._welcome else 1.0
        )

    @staticmethod
    def _decode(frame: bytes) -> Message | None:
        try:
            return decode(frame)
        except ProtocolError as e:
            logger.error("dropping bad frame from broker: %s", e)
            return None


def agent_main(config: AgentConfig) -> None:
    """Process entry point for a local worker started by the broker's pool."""
    os.setpgid(0, 0)  # Ctrl-C goes to the broker, which shuts workers down in order
    die_with_parent()
    if config.parent_pid is not None and os.getppid() != config.parent_pid:
        sys.exit(EXIT_NO_BROKER)  # the parent died before the death signal was armed
    logging.basicConfig(
        level=config.log_level, format="%(asctime)s worker[%(process)d] %(levelname)s %(message)s"
    )
    agent = WorkerAgent(config)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        agent.request_stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(agent.run())


def main(argv: list[str] | None = None) -> None:
    """``python -m worker.agent``: how the pool starts a local worker in a fresh interpreter."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m worker.agent")
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--parent-pid", type=int, default=None)
    parser.add_argument("--startup-timeout", type=float, default=60.0)
    parser.add_argument("--log-level", type=int, default=logging.WARNING)
    parser.add_argument("--prefetch", type=int, default=1)
    parser.add_argument("--keys-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    agent_main(
        AgentConfig(
            args.endpoint,
            args.parent_pid,
            args.startup_timeout,
            args.log_level,
            args.prefetch,
            args.keys_dir,
        )
    )


if __name__ == "__main__":
    main()
