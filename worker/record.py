"""What an executor child is doing, in memory it shares with its agent.

The child takes ASSIGNs from its own socket and sends RESULTs on it; the agent is not woken
per quantum. It reads this record instead when it needs to know: when the child died (which
attempt was running, and how far down the worker's dispatches it got), to enforce a deadline
the child's own alarm did not, to take back a queued quantum (REVOKE) the child has not
taken yet, and to watch the memory of an attempt that has a memory request. Both sides change
it under a lock, so a take and a revoke never both win, and an attempt cannot end while the
agent acts on a sample of it.

The agent is woken (a byte on a pipe) only when an attempt with a memory request starts while
it is not watching already; it watches until it finds none running.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.synchronize import Lock

__all__ = ["MAX_LOG_PATH", "REVOKED_HELD", "Running", "SharedRecord", "Watched"]

MAX_LOG_PATH = 4096  # bytes of the running quantum's log path kept (PATH_MAX)
REVOKED_HELD = 64  # revocations the child has not copied yet, at most (the agent refuses more)
_LOCK_WAIT_S = 0.5  # a child killed while holding the lock must not hang its agent


class _Fields(ctypes.Structure):
    _fields_ = [
        ("last_seq", ctypes.c_uint64),  # the last ASSIGN taken off the socket
        ("running", ctypes.c_uint32),  # 1 while that one runs
        ("draining", ctypes.c_uint32),  # the worker is shutting down: start nothing new
        ("start_time", ctypes.c_double),  # wall clock, for the report
        ("deadline", ctypes.c_double),  # monotonic; NaN when it has no timeout
        ("timeout_s", ctypes.c_double),
        ("memory_mb", ctypes.c_double),  # the running attempt's request; NaN when it has none
        ("peak_kb", ctypes.c_uint64),  # its process tree's peak as the agent sampled it
        ("base_kb", ctypes.c_uint64),  # the child's own resident memory when it took it
        ("ready_kb", ctypes.c_uint64),  # the child's own resident memory when it was ready
        ("watching", ctypes.c_uint32),  # the agent samples (it needs no wake-up)
        ("revoked_count", ctypes.c_uint64),
        ("revoked_seen", ctypes.c_uint64),  # of those, the ones the child has copied
        ("revoked", ctypes.c_uint64 * REVOKED_HELD),
        ("log_path", ctypes.c_char * MAX_LOG_PATH),
    ]


@dataclass(frozen=True, slots=True)
class Running:
    """The attempt a child is running, as its record says."""

    seq: int
    start_time: float
    deadline: float | None
    timeout_s: float | None
    log_path: str
    memory_mb: float | None
    peak_kb: int  # 0 when the agent sampled none


@dataclass(frozen=True, slots=True)
class Watched:
    """An attempt running with a memory request: what the agent samples."""

    seq: int
    memory_mb: float
    base_kb: int  # what the child held when the attempt began: not the attempt's


class SharedRecord:
    """Made by the agent for each child (a fresh one per child: sequence numbers and the lock
    start over) and handed to it at start (it pickles across the forkserver). The child calls
    ``take``, ``finished`` and ``peak_kb``; the agent ``revoke`` and ``drain``, watches memory
    (``wake_fd``, ``watched``, ``sampled``, ``stop_watching``), and reads ``running`` and
    ``last_seq``. The agent ``close``s it once the child is gone."""

    def __init__(self, mp: BaseContext) -> None:
        self._fields = mp.RawValue(_Fields)
        self._fields.memory_mb = math.nan
        self._lock: Lock = mp.Lock()
        self._wake_r, self._wake_w = mp.Pipe(duplex=False)
        self._seen = 0  # (child side) revocations already copied into ``_revoked``
        self._revoked: set[int] = set()

    def __getstate__(self) -> tuple[object, Lock, Connection]:
        return self._fields, self._lock, self._wake_w

    def __setstate__(self, state: tuple[object, Lock, Connection]) -> None:
        self._fields, self._lock, self._wake_w = state  # type: ignore[assignment]
        self._seen, self._revoked = 0, set()

    # ------------------------------------------------------------------ child side
    def take(
        self,
        seq: int,
        timeout_s: float | None,
        log: str,
        memory_mb: float | None = None,
        base_kb: int = 0,
    ) -> str | None:
        """Take dispatch ``seq`` off the socket; None if it may run (it is now recorded as
        running, its deadline from now, its memory request for the agent to watch), else why
        not: "revoked" (the agent answered the broker already) or "draining"."""
        f = self._fields
        wake = False
        with self._lock:
            f.last_seq = seq
            if f.revoked_count != self._seen:
                self._catch_up()
            if seq in self._revoked:
                self._revoked.discard(seq)
                return "revoked"
            if f.draining:
                return "draining"
            f.running, f.start_time = 1, time.time()
            f.timeout_s = math.nan if timeout_s is None else timeout_s
            f.deadline = math.nan if timeout_s is None else time.monotonic() + timeout_s
            f.log_path = log.encode()[:MAX_LOG_PATH]
            f.peak_kb, f.base_kb = 0, base_kb
            if memory_mb is None:
                f.memory_mb = math.nan
            else:
                f.memory_mb = memory_mb
                wake, f.watching = not f.watching, 1
        if wake:
            os.write(self._wake_w.fileno(), b"w")
        return None

    def ready(self, rss_kb: int) -> None:
        """(child side) It is ready, holding ``rss_kb``: what any quantum holds is beyond it."""
        self._fields.ready_kb = rss_kb

    @property
    def ready_kb(self) -> int:
        return int(self._fields.ready_kb)

    def finished(self) -> None:
        with self._lock:
            self._fields.running = 0

    def peak_kb(self) -> int:
        """The running attempt's tree peak as the agent sampled it (0: no sample)."""
        return int(self._fields.peak_kb)

    def _catch_up(self) -> None:
        f = self._fields
        for n in range(self._seen, f.revoked_count):
            self._revoked.add(f.revoked[n % REVOKED_HELD])
        self._seen = f.revoked_seen = f.revoked_count

    # ------------------------------------------------------------------ agent side
    def revoke(self, seq: int) -> bool:
        """Take back dispatch ``seq`` if the child has not taken it yet, and the revocations
        it has not copied yet leave room for one more (else it runs: none is forgotten)."""
        f = self._fields
        if not self._lock.acquire(timeout=_LOCK_WAIT_S):
            return False
        try:
            if f.last_seq >= seq or f.revoked_count - f.revoked_seen >= REVOKED_HELD:
                return False
            f.revoked[f.revoked_count % REVOKED_HELD] = seq
            f.revoked_count += 1
            return True
        finally:
            self._lock.release()

    def drain(self) -> bool:
        """From now on the child starts nothing (it gives queued quanta back); True if it
        is running one now."""
        if not self._lock.acquire(timeout=_LOCK_WAIT_S):
            return True
        try:
            self._fields.draining = 1
            return bool(self._fields.running)
        finally:
            self._lock.release()

    @property
    def last_seq(self) -> int:
        return int(self._fields.last_seq)

    def running(self) -> Running | None:
        """The attempt the child is running (read without the lock: the agent asks when the
        child is dead, or only to compare a deadline)."""
        f = self._fields
        if not f.running:
            return None
        deadline = None if math.isnan(f.deadline) else float(f.deadline)
        return Running(
            seq=int(f.last_seq),
            start_time=float(f.start_time),
            deadline=deadline,
            timeout_s=None if math.isnan(f.timeout_s) else float(f.timeout_s),
            log_path=f.log_path.decode(errors="replace"),
            memory_mb=None if math.isnan(f.memory_mb) else float(f.memory_mb),
            peak_kb=int(f.peak_kb),
        )

    @property
    def wake_fd(self) -> int:
        """Readable when an attempt with a memory request started while nobody watched."""
        return self._wake_r.fileno()

    def woken(self) -> None:
        """Take the wake-ups ``wake_fd`` holds (call when it is readable)."""
        os.read(self._wake_r.fileno(), 4096)

    def watched(self) -> Watched | None:
        """The attempt to sample next, if one with a memory request runs (read without the
        lock: ``sampled`` checks it is still that one)."""
        f = self._fields
        seq, memory_mb = int(f.last_seq), float(f.memory_mb)
        if not f.running or math.isnan(memory_mb):
            return None
        return Watched(seq, memory_mb, int(f.base_kb))

    def stop_watching(self) -> bool:
        """Stop watching unless an attempt with a memory request runs (then False): the next
        one to start wakes the agent."""
        if not self._lock.acquire(timeout=_LOCK_WAIT_S):
            return False
        try:
            f = self._fields
            if f.running and not math.isnan(f.memory_mb):
                return False
            f.watching = 0
            return True
        finally:
            self._lock.release()

    @contextlib.contextmanager
    def sampled(self, seq: int, rss_kb: int) -> Iterator[Running | None]:
        """Add a sample of attempt ``seq``'s tree to its peak and hold the lock while the
        caller acts on it (kills the child, say): the attempt cannot end, be reported or be
        followed by another meanwhile. None if it is not running (any more)."""
        if not self._lock.acquire(timeout=_LOCK_WAIT_S):
            yield None
            return
        try:
            f = self._fields
            if not f.running or f.last_seq != seq:
                yield None
                return
            f.peak_kb = max(int(f.peak_kb), rss_kb)
            yield self.running()
        finally:
            self._lock.release()

    def close(self) -> None:
        """The agent's ends of the wake-up pipe (the child is gone)."""
        self._wake_r.close()
        self._wake_w.close()
