"""A worker's session with its broker, after WELCOME: relay ASSIGN frames to the executor
child and RESULT frames back, heartbeat, and enforce the running quantum's deadline. Never
runs user code, so its heartbeats never stall behind a busy task.

Loop: poll (socket, child pipe, child exit) until the nearest deadline -> handle broker frames
-> handle the child's result or death -> enforce deadlines (timeout, broker silence, parent).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import assert_never

import zmq

from common.codec import Peek, decode, encode, peek
from common.errors import ProtocolError
from common.exits import ExitCode
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
from worker.capture import scratch_path
from worker.launch import AgentConfig
from worker.lifecycle import describe_exit
from worker.runner import ended_without_result
from worker.supervisor import ExecutorSupervisor

__all__ = ["AgentSession"]

logger = logging.getLogger(__name__)

_TIMEOUT_EXIT_CODE = -signal.SIGKILL


@dataclass(slots=True)
class _Running:
    job: Peek
    deadline: float | None
    started: float  # wall clock, for the report


class AgentSession:
    """Serves the broker that sent ``welcome`` over ``sock`` until told to stop."""

    def __init__(
        self, config: AgentConfig, welcome: Welcome, sock: zmq.Socket[bytes], poller: zmq.Poller
    ) -> None:
        self.config = config
        self._welcome = welcome
        self._sock = sock
        self._log_dir = Path(welcome.log_dir)
        self._interval_s = welcome.heartbeat_interval_s
        self._silence_limit_s = welcome.heartbeat_interval_s * welcome.liveness
        self._child = ExecutorSupervisor(welcome, poller)
        self._poller = poller
        self._running: _Running | None = None
        self._queued: deque[tuple[Peek, bytes]] = deque()
        self._ready_sent = False
        self._draining_until: float | None = None  # stopping once the running quantum ends
        self._stop: tuple[str, ExitCode] | None = None
        self._last_broker = self._next_heartbeat = time.monotonic()

    def request_stop(self, reason: str, code: ExitCode = ExitCode.OK) -> None:
        """Safe from a signal handler: only sets a flag the loop reads."""
        if self._stop is None:
            self._stop = (reason, code)

    # ------------------------------------------------------------------ loop
    def run(self) -> ExitCode:
        """Serve until stopped; the exit code says why (OK for a requested shutdown)."""
        try:
            self._child.start()
            self._loop()
        finally:
            pid = self._child.pid
            self._child.stop()
            if pid is not None:
                scratch_path(self._log_dir, pid).unlink(missing_ok=True)
        reason, code = self._stop or ("stopping", ExitCode.OK)
        if code is not ExitCode.BROKER_LOST:
            # GOODBYE also acknowledges a SHUTDOWN: the broker waits for it before it closes.
            self._send(Goodbye(reason=reason))
        return code

    def _loop(self) -> None:
        while self._stop is None:
            now = time.monotonic()
            wake = min(self._next_heartbeat, self._last_broker + self._silence_limit_s)
            wake = min(wake, now + self._interval_s)
            if self._running is not None and self._running.deadline is not None:
                wake = min(wake, self._running.deadline)
            if self._draining_until is not None:
                wake = min(wake, self._draining_until)
            events = dict(self._poller.poll(int(max(0.0, wake - now) * 1000)))
            if self._sock in events:
                self._drain_socket()
            # A child replaced while handling these events frees fds that a new child may
            # reuse: its events belong to the old one, so they are not looked at again.
            generation = self._child.generation
            if self._child.readable(events):
                self._read_child()
            if generation == self._child.generation and self._child.exited(events):
                self._child_exited()
            now = time.monotonic()
            self._enforce_deadlines(now)
            if now >= self._next_heartbeat:
                self._send(Heartbeat())

    def _enforce_deadlines(self, now: float) -> None:
        if self._draining_until is not None and now >= self._draining_until:
            self.request_stop("shutdown")  # the running quantum is killed on the way out
        r = self._running
        if r is not None and r.deadline is not None and now >= r.deadline:
            pid = self._child.pid
            self._child.stop()  # kills its process group: the task's own children too
            message = f"timed out after {r.job.timeout_s:g}s; executor killed"
            self._report_end(ResultStatus.TIMEOUT, _TIMEOUT_EXIT_CODE, Reason.TIMEOUT, message, pid)
            self._replace_child()
        if now - self._last_broker > self._silence_limit_s:
            logger.error("broker silent for %.1fs: exiting", now - self._last_broker)
            self.request_stop("broker lost", ExitCode.BROKER_LOST)
        parent = self.config.parent_pid
        if parent is not None and os.getppid() != parent:
            logger.error("parent process %d is gone: exiting", parent)
            self.request_stop("parent gone", ExitCode.PARENT_GONE)

    # ------------------------------------------------------------------ broker frames
    def _drain_socket(self) -> None:
        # EVENTS, not recv-until-EAGAIN: an exception per wake-up costs more than the check.
        while self._stop is None and int(self._sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            frame = self._sock.recv(zmq.NOBLOCK)
            self._last_broker = time.monotonic()
            try:
                # ASSIGN is relayed verbatim; only the executor child decodes it fully.
                job = peek(frame)
                msg = None if job is not None else decode(frame)
            except ProtocolError as e:
                logger.error("dropping bad frame from broker: %s", e)
                continue
            if job is not None:
                if job.kind is MessageType.ASSIGN:
                    self._start_quantum(job, frame)
                else:
                    logger.warning("unexpected RESULT from broker, dropped")
                continue
            assert msg is not None
            self._on_message(msg)

    def _on_message(self, msg: Message) -> None:
        match msg:
            case Shutdown(reason=reason, grace_s=grace):
                logger.info("broker asked to shut down (%s), grace %.1fs", reason, grace)
                self._queued.clear()
                if grace > 0 and self._running is not None:
                    self._draining_until = time.monotonic() + grace
                else:
                    self.request_stop("shutdown")
            case Revoke(quantum_id=qid, attempt=attempt):
                self._revoke(qid, attempt)
            case Heartbeat():
                pass
            case Refuse(reason=reason):
                logger.error("broker refused this worker: %s", reason)
                self.request_stop("refused", ExitCode.REFUSED)
            case (
                Assign()
                | Hello()
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
        if self._running is not None or not self._child.alive:
            if len(self._queued) < self.config.prefetch:
                self._queued.append((job, frame))
                return
            logger.error("ASSIGN %s beyond this worker's slots: refusing", job.quantum_id)
            message = "worker was busy"
            self._send_result(job, ResultStatus.FAILURE, None, Reason.WORKER_LOST, message)
            return
        now = time.monotonic()
        deadline = now + job.timeout_s if job.timeout_s is not None else None
        self._running = _Running(job, deadline, time.time())
        self._child.send(frame)

    def _start_next(self) -> None:
        if self._queued and self._running is None and self._child.alive:
            self._start_quantum(*self._queued.popleft())

    # ------------------------------------------------------------------ the child
    def _replace_child(self) -> None:
        self._child.stop()
        if self._stop is None:
            self._child.start()
            self._start_next()

    def _read_child(self) -> bool:
        """Relay one result from the child; False once the child is gone or replaced."""
        frame = self._child.recv()
        if frame is None:
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
        self._child.quanta += 1
        if self._draining_until is not None:
            self._send_frame(frame)
            self.request_stop("shutdown")
            return False
        if self._child.should_recycle():
            self._send_frame(frame)
            self._replace_child()  # starts the next queued quantum on the fresh child
            return False
        self._start_next()  # the child starts the next quantum before the broker hears back
        self._send_frame(frame)
        return True

    def _child_exited(self) -> None:
        generation = self._child.generation
        # A result written just before exiting still counts.
        while self._child.pending() and self._read_child():
            pass
        if self._child.generation != generation:
            return  # that result recycled the child already
        code = self._child.exit_code()
        if self._running is not None:
            reason = Reason.SIGNAL if code < 0 else Reason.EXIT_CODE
            message = f"executor process {describe_exit(code)}"
            if code == -signal.SIGKILL and self._child.oom_killed():
                reason = Reason.OUT_OF_MEMORY
                message += " by the kernel's out-of-memory killer"
            self._report_end(ResultStatus.FAILURE, code, reason, message, self._child.pid)
        elif code != 0:
            logger.warning("idle executor child %s; replacing it", describe_exit(code))
        self._replace_child()

    # ------------------------------------------------------------------ sending
    def _report_end(
        self,
        status: ResultStatus,
        code: int | None,
        reason: Reason,
        message: str,
        child_pid: int | None,
    ) -> None:
        """The running quantum ended without a result of its own (timeout, crash)."""
        r = self._running
        assert r is not None
        self._running = None
        self._send_result(r.job, status, code, reason, message, r.started, child_pid)

    def _send_result(
        self,
        job: Peek,
        status: ResultStatus,
        code: int | None,
        reason: Reason,
        message: str,
        started: float | None = None,
        child_pid: int | None = None,
    ) -> None:
        self._send(
            ended_without_result(
                job, status, code, reason, message, started, self._log_dir, child_pid
            )
        )

    def _send(self, msg: Message) -> None:
        self._send_frame(encode(msg))

    def _send_frame(self, frame: bytes) -> None:
        try:
            self._sock.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            logger.warning("broker unreachable; message dropped")
        self._next_heartbeat = time.monotonic() + self._interval_s
