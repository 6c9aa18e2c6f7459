"""The local worker supply: which agent processes the broker started, which of them are still
starting, when to start replacements, and when to give up. Pure: explicit ``now``, no processes.

The rules a run keeps so that it always ends:
- a process must register (HELLO) within the start-up timeout, or it is killed;
- lost processes are replaced at once while losses are rare: at most ``target`` starts a second
  (a token bucket), never a count per run;
- a process that ends before its worker was ever READY is a failed start: the next starts wait
  a backoff doubling from ``BACKOFF_S`` up to ``BACKOFF_MAX_S`` until a worker is READY again,
  which forgets the failures (a process stopped while starting must not hold back the
  replacement of others, so every empty place is filled once the backoff ends);
- after ``MAX_START_FAILURES`` failed starts in a row, with no worker READY and no process
  left starting, there are no workers to be had (``exhausted``) and the run stops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["BACKOFF_MAX_S", "BACKOFF_S", "MAX_START_FAILURES", "WorkerSupply"]

MAX_START_FAILURES = 5
BACKOFF_S = 0.25
BACKOFF_MAX_S = 10.0
_RATE_WINDOW_S = 1.0  # ``target`` starts in this long, at most


@dataclass(slots=True)
class _Process:
    started_at: float
    registered: bool = False  # its agent said HELLO
    ready: bool = False  # its worker has been READY
    killed: bool = False  # killed for not registering in time


class WorkerSupply:
    """Keeps ``target`` local agent processes alive within the rules above."""

    def __init__(self, target: int, startup_timeout_s: float) -> None:
        self.target = target
        self._startup_s = startup_timeout_s
        self._procs: dict[int, _Process] = {}
        self._pending = 0  # starts asked for, not yet reported as started or failed
        self._tokens = float(max(1, target))
        self._tokens_at = 0.0
        self.failures = 0  # failed starts in a row
        self.last_failure = ""
        self._backoff_until = -math.inf

    # ------------------------------------------------------------------ the driver reports
    def started(self, pid: int, now: float) -> None:
        self._pending = max(0, self._pending - 1)
        self._procs[pid] = _Process(now)

    def start_failed(self, why: str, now: float, count: int = 1) -> None:
        """``count`` of the starts asked for did not happen: one failed start."""
        self._pending = max(0, self._pending - count)
        self._failed(why, now)

    def registered(self, pid: int) -> bool:
        """``pid`` said HELLO; False if it is not one of ours."""
        proc = self._procs.get(pid)
        if proc is None:
            return False
        proc.registered = True
        return True

    def ready(self, pid: int) -> None:
        """``pid``'s worker is READY: the failures in a row are over."""
        proc = self._procs.get(pid)
        if proc is not None:
            proc.ready = True
            self.failures = 0
            self._backoff_until = -math.inf

    def exited(self, pid: int, why: str, now: float) -> bool:
        """``pid`` ended; whether it had registered. Counted as a failed start if it never
        got a READY worker up."""
        proc = self._procs.pop(pid, None)
        if proc is None:
            return False
        if not proc.ready:
            self._failed(why, now)
        return proc.registered

    # ------------------------------------------------------------------ decisions
    def overdue(self, now: float) -> list[int]:
        """Processes that have not registered within the start-up timeout: to be killed
        (their exit then counts as a failed start)."""
        out = []
        for pid, proc in self._procs.items():
            if not proc.registered and not proc.killed and now >= proc.started_at + self._startup_s:
                proc.killed = True
                out.append(pid)
        return out

    def starts_due(self, now: float) -> int:
        """How many processes to start now (reserved: report each as started or failed)."""
        missing = self._missing()
        if missing <= 0 or now < self._backoff_until:
            return 0
        self._refill(now)
        n = min(missing, int(self._tokens))
        self._tokens -= n
        self._pending += n
        return n

    def exhausted(self, registered_workers: int) -> bool:
        """No worker is to be had: too many failed starts in a row, no process of ours alive
        or coming, and no other worker registered (an attached one, even while its executor
        is being replaced, may still serve: the stuck-worker rule bounds how long)."""
        return (
            self.target > 0
            and self.failures >= MAX_START_FAILURES
            and registered_workers == 0
            and not self._procs
            and self._pending == 0
        )

    def next_deadline(self) -> float | None:
        """The earliest moment ``overdue`` or ``starts_due`` could have something new."""
        times = [
            p.started_at + self._startup_s
            for p in self._procs.values()
            if not p.registered and not p.killed
        ]
        if self._missing() > 0:
            # a start needs the backoff over and a token
            token_at = -math.inf
            if self._tokens < 1:
                rate = max(1, self.target) / _RATE_WINDOW_S
                token_at = self._tokens_at + (1 - self._tokens) / rate
            times.append(max(self._backoff_until, token_at))
        return min((t for t in times if math.isfinite(t)), default=None)

    # ------------------------------------------------------------------ inside
    def _missing(self) -> int:
        """Starts wanted: every empty place."""
        return self.target - len(self._procs) - self._pending

    def _failed(self, why: str, now: float) -> None:
        self.failures += 1
        self.last_failure = why
        self._backoff_until = now + min(BACKOFF_MAX_S, BACKOFF_S * 2 ** (self.failures - 1))

    def _refill(self, now: float) -> None:
        capacity = float(max(1, self.target))
        rate = capacity / _RATE_WINDOW_S
        self._tokens = min(capacity, self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
