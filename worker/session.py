"""A worker's session with its broker, after WELCOME: heartbeat, keep an executor child
running, and supervise it. Never runs user code, so its heartbeats never stall behind a busy
task, and never relays: the child takes its quanta from its own socket.

What the child does is in the record it shares with the agent (``SharedRecord``). The agent
reads it when the child dies (which attempt it was running, how far it got: EXECUTOR_EXITED),
on REVOKE (a quantum the child has not taken yet is taken back), on SHUTDOWN with a grace
(the child starts nothing new), to enforce a deadline the child's own alarm did not, and to
watch the memory of an attempt with a memory request (``MemoryWatch``; the child wakes it).

Loop: poll (socket, child exit, memory wake-up) until the nearest deadline -> handle broker
frames -> handle the child's death -> enforce deadlines (a running quantum's, its memory,
broker silence, parent).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from typing import assert_never

import zmq

from common.codec import decode, encode
from common.errors import ProtocolError
from common.exits import ExitCode
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
from worker.launch import AgentConfig
from worker.lifecycle import describe_exit
from worker.memory import MemoryWatch, OverMemory
from worker.procfs import tree_rss_kb
from worker.record import Running
from worker.supervisor import ExecutorSupervisor

__all__ = ["AgentSession"]

logger = logging.getLogger(__name__)

# The child's alarm ends a quantum at its deadline; the agent kills it this much later if a
# task took the alarm over (its own SIGALRM handler, ``signal.alarm``).
_ALARM_SLACK_S = 0.05
# A child that dies at start (it cannot reach the broker, say) is restarted after a delay
# doubling from this, up to the maximum, so a broken set-up does not fork in a loop.
_RESTART_DELAY_S, _RESTART_MAX_S = 0.05, 5.0
_QUICK_DEATH_S = 1.0


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
        self._child = ExecutorSupervisor(welcome, poller, config.endpoint, config.keys_dir)
        self._memory = MemoryWatch(welcome.memory_enforce)
        # the child's tree when last seen running nothing (or its quantum just beginning):
        # what a quantum uses, measured, is the tree beyond it
        self._idle_kb = 0
        self._poller = poller
        self._draining_until: float | None = None  # stopping once the running quantum ends
        self._restart_at: float | None = None  # when to start a child that died at start
        self._quick_deaths = 0
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
            running = self._running()
            if running is not None and running.deadline is not None:
                wake = min(wake, running.deadline + _ALARM_SLACK_S)
            if self._draining_until is not None:
                wake = min(wake, self._draining_until)
            if self._restart_at is not None:
                wake = min(wake, self._restart_at)
            if self._memory.next_sample_at is not None:
                wake = min(wake, self._memory.next_sample_at)
            events = dict(self._poller.poll(int(max(0.0, wake - now) * 1000)))
            if self._sock in events:
                self._drain_socket()
            if self._child.woken(events):
                self._memory.wake(time.monotonic())
                self._idle_kb = self._tree_kb() or self._idle_kb  # (its quantum just began)
            if self._child.exited(events):
                self._child_exited()
            now = time.monotonic()
            if self._restart_at is not None and now >= self._restart_at and self._stop is None:
                self._restart_at = None
                self._child.start()
            self._enforce_deadlines(now)
            if now >= self._next_heartbeat:
                self._send(Heartbeat(rss_kb=self._measure()))

    def _measure(self) -> int | None:
        """What the running quantum uses now, for the broker's memory-pressure watch: the
        child's process tree less what it used when last seen idle (None when it runs
        nothing, or cannot be read)."""
        tree = self._tree_kb()
        if tree is None:
            return None
        if self._running() is None:
            self._idle_kb = tree
            return None
        record = self._child.record
        idle = max(self._idle_kb, record.ready_kb if record is not None else 0)
        return max(0, tree - idle)

    def _tree_kb(self) -> int | None:
        pid = self._child.pid
        return None if pid is None else tree_rss_kb(pid)

    def _running(self) -> Running | None:
        record = self._child.record
        return record.running() if record is not None and self._child.alive else None

    def _enforce_deadlines(self, now: float) -> None:
        if self._draining_until is not None and now >= self._draining_until:
            self.request_stop("shutdown")  # the running quantum is killed on the way out
        running = self._running()
        if (
            running is not None
            and running.deadline is not None
            and now >= running.deadline + _ALARM_SLACK_S
        ):
            # The alarm did not end it (the task took SIGALRM over): kill it from here.
            self._child_ended(-signal.SIGKILL, running, timed_out=True)
        self._watch_memory(now)
        if now - self._last_broker > self._silence_limit_s:
            logger.error("broker silent for %.1fs: exiting", now - self._last_broker)
            self.request_stop("broker lost", ExitCode.BROKER_LOST)
        parent = self.config.parent_pid
        if parent is not None and os.getppid() != parent:
            logger.error("parent process %d is gone: exiting", parent)
            self.request_stop("parent gone", ExitCode.PARENT_GONE)

    def _watch_memory(self, now: float) -> None:
        record, pid = self._child.record, self._child.pid
        if record is None or pid is None:
            return
        over = self._memory.sample(record, pid, now, max(self._idle_kb, record.ready_kb))
        if over is not None:
            self._child_ended(-signal.SIGKILL, over.running, timed_out=False, over=over)

    # ------------------------------------------------------------------ broker frames
    def _drain_socket(self) -> None:
        # EVENTS, not recv-until-EAGAIN: an exception per wake-up costs more than the check.
        while self._stop is None and int(self._sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            frame = self._sock.recv(zmq.NOBLOCK)
            self._last_broker = time.monotonic()
            try:
                msg = decode(frame)
            except ProtocolError as e:
                logger.error("dropping bad frame from broker: %s", e)
                continue
            self._on_message(msg)

    def _on_message(self, msg: Message) -> None:
        match msg:
            case Shutdown(reason=reason, grace_s=grace):
                logger.info("broker asked to shut down (%s), grace %.1fs", reason, grace)
                record = self._child.record
                running = record is not None and self._child.alive and record.drain()
                if grace > 0 and running:
                    self._draining_until = time.monotonic() + grace
                else:
                    self.request_stop("shutdown")
            case Revoke(quantum_id=qid, attempt=attempt, seq=seq):
                record = self._child.record
                if record is None or record.revoke(seq):
                    self._send(Revoked(quantum_id=qid, attempt=attempt))
            case Heartbeat():
                pass
            case Preempt(seq=seq):
                # memory pressure: stop the child if it runs that dispatch (the broker puts
                # the quantum back when it hears how the child ended)
                now_running = self._running()
                record = self._child.record
                if record is not None and now_running is not None and record.last_seq == seq:
                    logger.warning("stopping %s under memory pressure", msg.quantum_id)
                    self._child_ended(-signal.SIGKILL, now_running, timed_out=False)
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
                | ExecutorExited()
            ):
                logger.warning("unexpected %s from broker, dropped", type(msg).__name__)
            case _:
                assert_never(msg)

    # ------------------------------------------------------------------ the child
    def _child_exited(self) -> None:
        code = self._child.exit_code()
        record = self._child.record
        running = record.running() if record is not None else None
        timed_out = (
            running is not None
            and running.deadline is not None
            and time.monotonic() >= running.deadline - 0.01
            and code == -signal.SIGALRM
        )
        if running is None and code != 0:
            logger.warning("idle executor child %s; replacing it", describe_exit(code))
        self._child_ended(code, running, timed_out=timed_out)

    def _child_ended(
        self,
        code: int,
        running: Running | None,
        *,
        timed_out: bool,
        over: OverMemory | None = None,
    ) -> None:
        """Kill what is left of the child (its process group), tell the broker how far it got
        and how the attempt it was running ended, and start a fresh one."""
        pid, record = self._child.pid, self._child.record
        killed = code == -signal.SIGKILL and not timed_out and over is None
        oom = killed and self._child.oom_killed()
        died_at_start = self._child.age_s() < _QUICK_DEATH_S and code != 0
        self._child.stop()
        self._memory.forget()
        last_seq = record.last_seq if record is not None else 0
        now = time.time()
        status, reason, detail = _outcome(code, running, timed_out=timed_out, oom=oom, over=over)
        log = None
        if running is not None:
            log = running.log_path
            if pid is None or not keep_scratch(scratch_path(self._log_dir, pid), Path(log)):
                log = log if Path(log).exists() else None
        elif pid is not None:
            scratch_path(self._log_dir, pid).unlink(missing_ok=True)
        self._send(
            ExecutorExited(
                generation=self._child.generation,
                last_seq=last_seq,
                running=running is not None,
                status=status,
                exit_code=code,
                reason=reason,
                detail=detail,
                start_time=running.start_time if running is not None else now,
                end_time=now,
                log_path=log,
                max_rss_kb=(running.peak_kb or None) if running is not None else None,
                base_rss_kb=(record.ready_kb or None) if record is not None else None,
            )
        )
        if self._draining_until is not None:
            self.request_stop("shutdown")
        elif self._stop is None:
            self._restart(died_at_start and running is None and last_seq == 0)

    def _restart(self, died_at_start: bool) -> None:
        """A fresh child now, or after a growing delay if they keep dying at start."""
        self._quick_deaths = self._quick_deaths + 1 if died_at_start else 0
        if not self._quick_deaths:
            self._child.start()
            return
        delay = min(_RESTART_MAX_S, _RESTART_DELAY_S * 2 ** (self._quick_deaths - 1))
        logger.warning("executor child died at start; the next one in %.2fs", delay)
        self._restart_at = time.monotonic() + delay

    # ------------------------------------------------------------------ sending
    def _send(self, msg: Message) -> None:
        try:
            self._sock.send(encode(msg), zmq.NOBLOCK)
        except zmq.Again:
            logger.warning("broker unreachable; message dropped")
        self._next_heartbeat = time.monotonic() + self._interval_s


def _outcome(
    code: int, running: Running | None, *, timed_out: bool, oom: bool, over: OverMemory | None
) -> tuple[ResultStatus, Reason | None, str]:
    """Status, reason and message of the attempt a child ended with ``code`` was running."""
    detail = f"executor process {describe_exit(code)}"
    if running is None:
        return ResultStatus.FAILURE, None, detail
    if over is not None:
        return ResultStatus.FAILURE, Reason.MEMORY, over.message()
    if timed_out:
        message = f"timed out after {running.timeout_s or 0:g}s; executor killed"
        return ResultStatus.TIMEOUT, Reason.TIMEOUT, message
    if oom:
        detail += " by the kernel's out-of-memory killer"
        return ResultStatus.FAILURE, Reason.MEMORY, detail
    return ResultStatus.FAILURE, Reason.SIGNAL if code < 0 else Reason.EXIT_CODE, detail
