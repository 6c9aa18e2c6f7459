"""What the core tells a run's journal, and the journal as the core sees it: a sink of
attempt states. The journal itself (``broker.journal``, SQLite) is I/O and is handed in.
"""

from __future__ import annotations

import enum
from typing import Protocol

__all__ = ["JournalSink", "JournalState"]


class JournalState(enum.StrEnum):
    """What a journal row says happened to one attempt (values are stored as text)."""

    RUNNING = "running"  # dispatched
    SUCCESS = "success"
    FAILURE = "failure"
    TIMEOUT = "timeout"
    RETRY = "retry"  # lost with its worker, or failed in a way that is retried; dispatched again
    SKIPPED = "skipped"  # an ancestor failed
    CANCELLED = "cancelled"


class JournalSink(Protocol):
    """Takes every attempt's state as the core decides it; written out in the background."""

    def record(self, quantum_id: str, attempt: int, state: JournalState) -> None: ...

    def flush_if_due(self, now: float) -> None: ...

    def flush(self) -> None: ...
