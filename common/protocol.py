"""Every message between broker and workers: one enum of types, one frozen dataclass per type.

Must not encode anything itself (that is ``common.codec``, the only msgpack user).

    worker HELLO -> broker WELCOME (or REFUSE) -> worker READY -> broker ASSIGN
    -> worker RESULT -> ... -> broker SHUTDOWN
    HEARTBEAT both ways; any message counts as a sign of life. A worker leaving says GOODBYE.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from common.quantum import Quantum

__all__ = [
    "PROTOCOL_VERSION",
    "Assign",
    "Goodbye",
    "Heartbeat",
    "Hello",
    "Message",
    "MessageType",
    "Ready",
    "Refuse",
    "Result",
    "ResultStatus",
    "Shutdown",
    "Welcome",
]

PROTOCOL_VERSION = 1


class MessageType(enum.IntEnum):
    HELLO = 1
    WELCOME = 2
    REFUSE = 3
    ASSIGN = 4
    RESULT = 5
    HEARTBEAT = 6
    SHUTDOWN = 7
    GOODBYE = 8
    READY = 9


class ResultStatus(enum.StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    TIMEOUT = "timeout"


@dataclass(frozen=True, slots=True)
class Hello:
    """A worker agent introduces itself; ``slots`` is how many quanta it runs at once."""

    pid: int
    host: str
    slots: int


@dataclass(frozen=True, slots=True)
class Welcome:
    """The broker accepts a worker. ``executor`` is the pickled quantum executor, opaque to
    the agent, unpickled only in the executor child; ``preload`` names the task modules the
    child imports before it says READY."""

    worker_id: str
    heartbeat_interval_s: float
    liveness: int
    executor: bytes
    log_dir: str
    preload: list[str]


@dataclass(frozen=True, slots=True)
class Ready:
    """The worker's executor is loaded and its task modules imported: it can take work."""


@dataclass(frozen=True, slots=True)
class Refuse:
    """The broker will not work with this worker; the worker logs ``reason`` and exits."""

    reason: str


@dataclass(frozen=True, slots=True)
class Assign:
    """Run ``quantum``; ``attempt`` fences results of superseded dispatches."""

    quantum: Quantum
    attempt: int
    timeout_s: float | None


@dataclass(frozen=True, slots=True)
class Result:
    """How one attempt ended. Task failures travel as data, never as pickled exceptions.

    ``start_time``/``end_time`` are wall-clock (for reports); ``duration_s`` is monotonic.
    """

    quantum_id: str
    attempt: int
    status: ResultStatus
    exit_code: int | None
    exc_class: str | None
    exc_message: str | None
    reason: str | None
    start_time: float
    end_time: float
    duration_s: float
    max_rss_kb: int | None
    log_path: str | None


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Sign of life when nothing else is being said."""


@dataclass(frozen=True, slots=True)
class Shutdown:
    """The broker tells a worker to stop: kill any running quantum, then exit."""

    reason: str


@dataclass(frozen=True, slots=True)
class Goodbye:
    """A worker tells the broker it is leaving (its running quantum, if any, is lost)."""

    reason: str


Message = Hello | Welcome | Ready | Refuse | Assign | Result | Heartbeat | Shutdown | Goodbye
