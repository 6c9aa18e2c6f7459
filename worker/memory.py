"""The agent's watch over the memory of the attempt its executor child runs, while that attempt
has a memory request: it samples the child's process tree (the child and its descendants),
keeps the peak in the record the two share, and past the request does what WELCOME's
``memory_enforce`` says: kill the child's process group (the session reports it), warn once
per attempt, or nothing. Runs in the agent; never runs user code.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

from worker.lifecycle import kill_group
from worker.procfs import tree_rss_kb
from worker.record import Running, SharedRecord

__all__ = ["SAMPLE_INTERVAL_S", "Enforcement", "MemoryWatch", "OverMemory"]

logger = logging.getLogger(__name__)

SAMPLE_INTERVAL_S = 0.05  # a sample of a watched attempt's tree at least this often
# An attempt is over its request once it holds more than the request plus this share of it,
# and at least ALLOWANCE_MIN_MB more: what the executor allocates around the task (its result,
# its log) is not the task's
ALLOWANCE = 0.05
ALLOWANCE_MIN_MB = 16.0


class Enforcement(enum.Enum):
    """What the agent does with an attempt past its memory request (WELCOME's word)."""

    KILL = "kill"
    WARN = "warn"
    OFF = "off"


@dataclass(frozen=True, slots=True)
class OverMemory:
    """An attempt killed for outgrowing its request (``running`` as it was at the kill)."""

    running: Running
    memory_mb: float
    own_kb: int  # what the attempt held beyond its executor's own when it was killed

    @property
    def peak_kb(self) -> int:
        return self.running.peak_kb

    def message(self) -> str:
        return f"{_over_text(self.own_kb, self.memory_mb)}; killed"


def limit_kb(memory_mb: float) -> float:
    """What an attempt requesting ``memory_mb`` may hold before it is over (``ALLOWANCE``)."""
    return (memory_mb + max(ALLOWANCE * memory_mb, ALLOWANCE_MIN_MB)) * 1024


def _over_text(own_kb: int, memory_mb: float) -> str:
    return f"used {own_kb / 1024:,.0f} MiB, over its request of {memory_mb:,.0f} MiB"


class MemoryWatch:
    """Samples while an attempt with a request runs (from the child's wake-up until the
    agent finds none running); ``next_sample_at`` is None while there is nothing to watch."""

    def __init__(self, enforce: str) -> None:
        try:
            self._enforce = Enforcement(enforce)
        except ValueError:
            logger.warning("unknown memory enforcement %r: quanta over it are killed", enforce)
            self._enforce = Enforcement.KILL
        self.next_sample_at: float | None = None
        self._warned = -1  # the dispatch warned about (once per attempt)

    def wake(self, now: float) -> None:
        """An attempt with a memory request started: sample it now."""
        self.next_sample_at = now

    def forget(self) -> None:
        """The child is gone (its successor wakes the watch when it needs it)."""
        self.next_sample_at = None

    def sample(
        self, record: SharedRecord, pid: int, now: float, idle_kb: int = 0
    ) -> OverMemory | None:
        """Sample once if due; the attempt over its request if it was killed for it. The
        attempt's own use is the tree beyond ``idle_kb``, what the executor held idle (the
        interpreter and the task modules are not the quantum's)."""
        if self.next_sample_at is None or now < self.next_sample_at:
            return None
        target = record.watched()
        if target is None:
            if record.stop_watching():
                self.next_sample_at = None
                return None
            target = record.watched()  # one started in between
            if target is None:
                return None
        self.next_sample_at = now + SAMPLE_INTERVAL_S
        rss_kb = tree_rss_kb(pid)
        if rss_kb is None:
            return None  # the child is gone: its exit is reported as such
        with record.sampled(target.seq, rss_kb) as running:
            own = rss_kb - (target.base_kb or idle_kb)
            if running is None or own <= limit_kb(target.memory_mb):
                return None  # within its request, or ended meanwhile (the sample is not its)
            return self._over(running, target.memory_mb, pid, own)

    def _over(self, running: Running, memory_mb: float, pid: int, own_kb: int) -> OverMemory | None:
        """Act on ``running`` past its request (called with the record held: it cannot end)."""
        match self._enforce:
            case Enforcement.KILL:
                kill_group(pid)
                return OverMemory(running, memory_mb, own_kb)
            case Enforcement.WARN:
                if self._warned != running.seq:
                    self._warned = running.seq
                    logger.warning(
                        "the quantum logging to %s %s",
                        running.log_path,
                        _over_text(own_kb, memory_mb),
                    )
            case Enforcement.OFF:
                pass
        return None
