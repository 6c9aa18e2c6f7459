"""What an executor child is doing, in memory it shares with its agent.

The child takes ASSIGNs from its own socket and sends RESULTs on it; the agent is not woken
per quantum. It reads this record instead when it needs to know: when the child died (which
attempt was running, and how far down the worker's dispatches it got), to enforce a deadline
the child's own alarm did not, and to take back a queued quantum (REVOKE) the child has not
taken yet. Both sides change it under a lock, so a take and a revoke never both win.
"""

from __future__ import annotations

import ctypes
import math
import time
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from multiprocessing.synchronize import Lock

__all__ = ["MAX_LOG_PATH", "Running", "SharedRecord"]

MAX_LOG_PATH = 4096  # bytes of the running quantum's log path kept (PATH_MAX)
_REVOKED = 64  # revoked dispatches remembered (only those not yet taken matter)
_LOCK_WAIT_S = 0.5  # a child killed while holding the lock must not hang its agent


class _Fields(ctypes.Structure):
    _fields_ = [
        ("last_seq", ctypes.c_uint64),  # the last ASSIGN taken off the socket
        ("running", ctypes.c_uint32),  # 1 while that one runs
        ("draining", ctypes.c_uint32),  # the worker is shutting down: start nothing new
        ("start_time", ctypes.c_double),  # wall clock, for the report
        ("deadline", ctypes.c_double),  # monotonic; NaN when it has no timeout
        ("timeout_s", ctypes.c_double),
        ("revoked_count", ctypes.c_uint64),
        ("revoked", ctypes.c_uint64 * _REVOKED),
        ("log_path", ctypes.c_char * MAX_LOG_PATH),
    ]


@dataclass(frozen=True, slots=True)
class Running:
    """The attempt a child is running, as its record says."""

    start_time: float
    deadline: float | None
    timeout_s: float | None
    log_path: str


class SharedRecord:
    """Made by the agent for each child (a fresh one per child: sequence numbers and the lock
    start over) and handed to it at start (it pickles across the forkserver). The child calls
    ``take`` and ``finished``; the agent ``revoke`` and ``drain``, and reads ``running`` and
    ``last_seq``."""

    def __init__(self, mp: BaseContext) -> None:
        self._fields = mp.RawValue(_Fields)
        self._lock: Lock = mp.Lock()
        self._seen = 0  # (child side) revocations already copied into ``_revoked``
        self._revoked: set[int] = set()

    def __getstate__(self) -> tuple[object, Lock]:
        return self._fields, self._lock

    def __setstate__(self, state: tuple[object, Lock]) -> None:
        self._fields, self._lock = state  # type: ignore[assignment]
        self._seen, self._revoked = 0, set()

    # ------------------------------------------------------------------ child side
    def take(self, seq: int, timeout_s: float | None, log: str) -> str | None:
        """Take dispatch ``seq`` off the socket; None if it may run (it is now recorded as
        running, its deadline from now), else why not: "revoked" (the agent answered the
        broker already) or "draining"."""
        f = self._fields
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
        return None

    def finished(self) -> None:
        with self._lock:
            self._fields.running = 0

    def _catch_up(self) -> None:
        f = self._fields
        for n in range(self._seen, f.revoked_count):
            self._revoked.add(f.revoked[n % _REVOKED])
        self._seen = f.revoked_count

    # ------------------------------------------------------------------ agent side
    def revoke(self, seq: int) -> bool:
        """Take back dispatch ``seq`` if the child has not taken it yet."""
        f = self._fields
        if not self._lock.acquire(timeout=_LOCK_WAIT_S):
            return False
        try:
            if f.last_seq >= seq:
                return False
            f.revoked[f.revoked_count % _REVOKED] = seq
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
            start_time=float(f.start_time),
            deadline=deadline,
            timeout_s=None if math.isnan(f.timeout_s) else float(f.timeout_s),
            log_path=f.log_path.decode(errors="replace"),
        )
