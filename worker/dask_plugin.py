"""zmpexec on a Dask worker: a worker plugin keeps one warm executor child per worker thread,
and the Dask task ``run_assign`` hands a quantum to a free child, waits on it with the GIL
released and, at the quantum's deadline, kills the child's process group and starts a fresh
child. Results go back as encoded RESULT frames (bytes), never as pickled exceptions.

Children are subprocesses (``python -m worker.child FD``): nanny-started Dask workers are
daemonic, and ``multiprocessing`` refuses to start children there. They die with their Dask
worker (parent-death signal and a pidfd watch), when the plugin is removed, and when the run's
driver stops renewing its lease (a SIGKILLed ``zmpexec run`` leaves nothing running).
Imports ``distributed``: used only by the dask engine.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from distributed import WorkerPlugin, get_worker

from common.codec import Peek, decode, encode, peek
from common.errors import ProtocolError
from common.protocol import MessageType, Ready, ResultStatus
from common.report import Reason
from worker.lifecycle import describe_exit, kill_group, single_threaded_libraries
from worker.runner import ended_without_result

__all__ = [
    "PLUGIN_NAME",
    "ExecutorPlugin",
    "kill_running",
    "renew_lease",
    "revoke_assign",
    "run_assign",
]

logger = logging.getLogger(__name__)

PLUGIN_NAME = "zmpexec-executors"
_STARTUP_TIMEOUT_S = 120.0


class _Child:
    """One executor child and its end of a socket pair."""

    def __init__(self, boot: bytes) -> None:
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        single_threaded_libraries(env)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "worker.child", str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                env=env,
            )
        finally:
            theirs.close()
        self.conn = Connection(ours.detach())
        self.conn.send_bytes(boot)

    def wait_ready(self, timeout_s: float) -> None:
        """Until the child said READY (its executor and task modules loaded)."""
        if not self.conn.poll(timeout_s):
            raise TimeoutError(f"executor child {self.proc.pid} not ready in {timeout_s:g}s")
        frame = self.conn.recv_bytes()
        if not isinstance(decode(frame), Ready):
            raise ProtocolError("executor child did not start with READY", frame)

    def kill(self) -> None:
        if self.proc.poll() is None:
            kill_group(self.proc.pid)
        try:
            self.proc.wait(5.0)
        except subprocess.TimeoutExpired:
            logger.error("executor child %d did not die", self.proc.pid)
        self.conn.close()


class ExecutorPlugin(WorkerPlugin):
    """Warm executor children on one Dask worker, for one run (``boot``: the pickled
    ``(executor blob, log dir, preload)`` every child starts with)."""

    name = PLUGIN_NAME

    def __init__(
        self, boot: tuple[bytes, str, list[str]], lease_s: float, stream_interval_s: float
    ) -> None:
        # only these travel to the workers (``__getstate__``)
        self._boot = boot
        self._lease_s = lease_s
        self._interval = stream_interval_s
        self._reset()

    def _reset(self) -> None:
        self._free: list[_Child] = []
        self._busy: set[_Child] = set()
        # Dask keys of tasks running here, and of queued ones taken back
        self._entered: set[str] = set()
        self._revoked: set[str] = set()
        self._lock = threading.Condition()
        self._lease = time.monotonic()
        self._closed = False
        self._restore: float | None = None  # the worker's batching interval before ours

    def __getstate__(self) -> dict[str, Any]:
        return {"boot": self._boot, "lease_s": self._lease_s, "interval": self._interval}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._boot, self._lease_s = state["boot"], state["lease_s"]
        self._interval = state["interval"]
        self._reset()

    # ------------------------------------------------------------------ plugin hooks
    # Both hooks run on the Dask worker's event loop: their blocking parts (starting children
    # and waiting for READY, reaping them) go to a thread, so the worker keeps answering.
    # The worker's messages to the scheduler (a result among them) go out at most every
    # ``interval`` while the run lasts (Dask's default, 2 ms, is a floor under a chain's hop).
    async def setup(self, worker: Any) -> None:
        await asyncio.to_thread(self._start_all, max(1, int(worker.state.nthreads)))
        threading.Thread(target=self._watch_lease, name="zmpexec-lease", daemon=True).start()
        stream = getattr(worker, "batched_stream", None)
        if stream is not None and hasattr(stream, "interval"):
            self._restore = stream.interval
            stream.interval = min(stream.interval, self._interval)

    async def teardown(self, worker: Any) -> None:
        if self._restore is not None:
            worker.batched_stream.interval = self._restore
        await asyncio.to_thread(self.close)

    def _start_all(self, n: int) -> None:
        Path(self._boot[1]).mkdir(parents=True, exist_ok=True)
        children = [self._start() for _ in range(n)]
        for child in children:  # the run starts once every worker's children are loaded
            child.wait_ready(_STARTUP_TIMEOUT_S)
        with self._lock:
            self._free.extend(children)
            self._lock.notify_all()

    # ------------------------------------------------------------------ children
    def _start(self) -> _Child:
        blob, log_dir, preload = self._boot
        return _Child(pickle.dumps((blob, log_dir, preload, os.getpid())))

    def close(self) -> None:
        """Kill every child (running quanta included)."""
        with self._lock:
            self._closed = True
            children = [*self._free, *self._busy]
            self._free.clear()
            self._lock.notify_all()
        for child in children:
            child.kill()

    def kill_running(self) -> int:
        """Kill the children running quanta now (fail-fast); their tasks report it."""
        with self._lock:
            running = list(self._busy)
        for child in running:
            if child.proc.poll() is None:
                kill_group(child.proc.pid)
        return len(running)

    def renew(self) -> None:
        self._lease = time.monotonic()

    def _watch_lease(self) -> None:
        while not self._closed:
            time.sleep(min(1.0, self._lease_s / 4))
            if time.monotonic() - self._lease > self._lease_s:
                logger.warning("zmpexec driver gone (lease expired): killing executor children")
                self.close()

    # ------------------------------------------------------------------ one quantum
    def revoke(self, key: str) -> bool:
        """Take back the task ``key`` unless it started (it will return at once)."""
        with self._lock:
            if key in self._entered:
                return False
            self._revoked.add(key)
            return True

    def run(self, frame: bytes, key: str) -> bytes | None:
        """The RESULT frame of the quantum in ASSIGN ``frame`` (Dask task ``key``); None if
        the task was revoked."""
        job = peek(frame)
        if job is None or job.kind is not MessageType.ASSIGN:
            raise ProtocolError("run_assign needs an ASSIGN frame", frame)
        self.renew()
        with self._lock:
            if key in self._revoked:
                self._revoked.discard(key)
                return None
            self._entered.add(key)
        try:
            return self._run_job(job, frame)
        finally:
            with self._lock:
                self._entered.discard(key)

    def _run_job(self, job: Peek, frame: bytes) -> bytes:
        with self._lock:
            while not self._free and not self._closed:
                self._lock.wait()
            if self._closed:
                raise RuntimeError("zmpexec executors on this worker were closed")
            child = self._free.pop()
            self._busy.add(child)
        taken = child
        try:
            out, child = self._run_on(child, job, frame)  # a fresh child after a kill
        finally:
            with self._lock:
                self._busy.discard(taken)
                if self._closed:
                    child.kill()
                else:
                    self._free.append(child)
                    self._lock.notify()
        return out

    def _run_on(self, child: _Child, job: Peek, frame: bytes) -> tuple[bytes, _Child]:
        """Result frame of ``job`` and the child to keep (a fresh one after a kill)."""
        started = time.time()
        deadline = None if job.timeout_s is None else time.monotonic() + job.timeout_s
        child.conn.send_bytes(frame)
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                ready = child.conn.poll(wait)  # the GIL is released while waiting
                data = child.conn.recv_bytes() if ready else None
            except (EOFError, OSError):
                return self._crashed(child, job, started), self._replacement(child)
            if data is None:
                return self._timed_out(child, job, started), self._replacement(child)
            answer = peek(data)
            if answer is not None and (answer.quantum_id, answer.attempt) == (
                job.quantum_id,
                job.attempt,
            ):
                return data, child
            # READY (a fresh child announcing itself) or a stale frame: keep waiting

    def _replacement(self, dead: _Child) -> _Child:
        """A fresh child for a killed one (none once the plugin is closing)."""
        return dead if self._closed else self._start()

    def _timed_out(self, child: _Child, job: Peek, started: float) -> bytes:
        child.kill()
        message = f"timed out after {job.timeout_s:g}s; killed with its process group"
        result = ended_without_result(
            job,
            ResultStatus.TIMEOUT,
            -signal.SIGKILL,
            Reason.TIMEOUT,
            message,
            started,
            Path(self._boot[1]),
            child.proc.pid,
        )
        return encode(result)

    def _crashed(self, child: _Child, job: Peek, started: float) -> bytes:
        child.kill()
        code = child.proc.returncode if child.proc.returncode is not None else -signal.SIGKILL
        reason = Reason.SIGNAL if code < 0 else Reason.EXIT_CODE
        result = ended_without_result(
            job,
            ResultStatus.FAILURE,
            code,
            reason,
            f"executor process {describe_exit(code)}",
            started,
            Path(self._boot[1]),
            child.proc.pid,
        )
        return encode(result)


def _plugin(worker: Any = None) -> ExecutorPlugin:
    plugin = (worker or get_worker()).plugins[PLUGIN_NAME]
    assert isinstance(plugin, ExecutorPlugin)
    return plugin


def run_assign(frame: bytes, topic: str, key: str) -> None:
    """The Dask task: run the quantum in ASSIGN ``frame`` on a warm executor child of this
    worker and publish its RESULT frame on the worker's event ``topic`` (pushed to the driver,
    which never fetches task results)."""
    worker = get_worker()
    result = _plugin(worker).run(frame, key)
    if result is not None:
        worker.log_event(topic, result)


def renew_lease(dask_worker: Any) -> None:
    """Called by the driver on every worker (``client.run``) while the run lives."""
    _plugin(dask_worker).renew()


def revoke_assign(key: str, dask_worker: Any) -> bool:
    """Called by the driver (``client.run`` on one worker): take back the queued task
    ``key``; False if it has started (its RESULT will come)."""
    return _plugin(dask_worker).revoke(key)


def kill_running(dask_worker: Any) -> int:
    """Called by the driver on every worker (``client.run``) to stop what runs now."""
    return _plugin(dask_worker).kill_running()
