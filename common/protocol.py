"""Every message between broker and workers: one enum of types, one frozen dataclass per type.

Must not encode anything itself (that is ``common.codec``, the only msgpack user).

    agent HELLO -> broker WELCOME (or REFUSE) -> executor child READY (on its own socket)
    -> broker ASSIGN (to the child) -> child RESULT -> ... -> broker SHUTDOWN (to the agent)
    The agent supervises beside its child and never relays: it reports a child's end
    (EXECUTOR_EXITED) and answers REVOKE.
    HEARTBEAT both ways; any message counts as a sign of life. A worker leaving says GOODBYE.
    Control clients (``zmpexec status`` / ``cancel``) send STATUS_REQUEST or CANCEL on the same
    socket without registering and get a STATUS_REPLY.
"""

from __future__ import annotations

import enum
import re
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Final

from common.quantum import Quantum
from common.report import Caveat, Reason

__all__ = [
    "MESSAGE_TYPES",
    "PROTOCOL_VERSION",
    "Assign",
    "Bounds",
    "Cancel",
    "ExecutorExited",
    "Goodbye",
    "Heartbeat",
    "Hello",
    "Message",
    "MessageType",
    "Preempt",
    "Ready",
    "Refuse",
    "Result",
    "ResultStatus",
    "Revoke",
    "Revoked",
    "Shutdown",
    "StatusReply",
    "StatusRequest",
    "Welcome",
]

# 2: typed RESULT reason, bounded numbers; 3: executor children direct; 4: follow-ons;
# 5: a quantum travels as an array; 6: resources (ASSIGN's request, the quantum's own peak, CPU;
# HEARTBEAT's measure, PREEMPT); 7: RESULT and EXECUTOR_EXITED carry what the executor held
# before the attempt (base_rss_kb); 8: RESULT's caveat (a success with a note)
PROTOCOL_VERSION = 8


@dataclass(frozen=True, slots=True)
class Bounds:
    """The inclusive range a numeric field accepts on the wire; the codec rejects a value
    outside it (and any NaN or infinity) as a malformed frame."""

    lo: float
    hi: float


# Numeric field types with their wire bounds: the codec derives its checks from these.
Pid = Annotated[int, Bounds(1, 2**31 - 1)]
Slots = Annotated[int, Bounds(1, 1024)]
Attempt = Annotated[int, Bounds(1, 1_000_000)]
Count = Annotated[int, Bounds(1, 2**53)]
Seq = Annotated[int, Bounds(0, 2**53)]  # a worker's dispatch sequence number (0: none yet)
Seconds = Annotated[float, Bounds(0.0, 1e9)]
Interval = Annotated[float, Bounds(1e-3, 1e6)]
Kibibytes = Annotated[int, Bounds(0, 2**53)]
Megabytes = Annotated[float, Bounds(0.0, 2**40)]  # MiB, as requests are counted
Epoch = Annotated[float, Bounds(0.0, 1e11)]  # wall-clock seconds (reports only)
ExitStatus = Annotated[int, Bounds(-(2**31), 2**31 - 1)]


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
    STATUS_REQUEST = 10
    STATUS_REPLY = 11
    CANCEL = 12
    REVOKE = 13
    REVOKED = 14
    EXECUTOR_EXITED = 15
    PREEMPT = 16


class ResultStatus(enum.StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    TIMEOUT = "timeout"


@dataclass(frozen=True, slots=True)
class Hello:
    """A worker agent introduces itself; ``slots`` is how many quanta it runs at once."""

    pid: Pid
    host: str
    slots: Slots


@dataclass(frozen=True, slots=True)
class Welcome:
    """The broker accepts a worker. ``executor`` is the pickled quantum executor, opaque to
    the agent, unpickled only in the executor child; ``preload`` names the task modules the
    child imports before it says READY. The agent replaces its executor child after
    ``max_quanta_per_executor`` quanta or once it uses more than ``max_rss_kb``. Its children
    connect to ``executor_link`` (a Unix socket, for workers on the broker's host), else to the
    broker's endpoint with a socket of their own."""

    worker_id: str
    heartbeat_interval_s: Interval
    liveness: Count
    executor: bytes
    log_dir: str
    preload: list[str]
    max_quanta_per_executor: Count | None
    max_rss_kb: Count | None
    executor_link: str | None
    memory_enforce: str = "kill"  # a quantum past its ASSIGN's memory_mb: kill | warn | off


@dataclass(frozen=True, slots=True)
class Ready:
    """Sent by a worker's executor child on its own socket once it has loaded the executor and
    imported the task modules: ASSIGNs for ``worker_id`` go to this socket from now on. A
    replacement child (``generation`` + 1) says READY again."""

    worker_id: str
    pid: Pid  # the worker agent's pid, as in its HELLO
    generation: Count


@dataclass(frozen=True, slots=True)
class Refuse:
    """The broker will not work with this worker; the worker logs ``reason`` and exits."""

    reason: str


@dataclass(frozen=True, slots=True)
class Assign:
    """Run ``quantum``; ``attempt`` fences results of superseded dispatches; ``seq`` numbers
    the worker's dispatches in the order sent (its executor child takes them in that order).
    A follow-on names the dispatch it follows (``after``, the one sent just before it): the
    child runs it only if that one succeeded there, and drops it silently otherwise (the
    broker, told how that one ended, settles it)."""

    quantum: Quantum
    attempt: Attempt
    timeout_s: Interval | None
    seq: Seq
    after: Seq = 0
    memory_mb: Megabytes | None = None  # this attempt's memory request (None: none declared)
    cpus: Slots | None = None  # the cores it declares (None: none; LSST's ExecutionResources)


@dataclass(frozen=True, slots=True)
class Result:
    """How one attempt ended. Task failures travel as data, never as pickled exceptions.

    ``start_time``/``end_time`` are wall-clock (for reports); ``duration_s`` is monotonic.
    """

    quantum_id: str
    attempt: Attempt
    status: ResultStatus
    exit_code: ExitStatus | None
    exc_class: str | None
    exc_message: str | None
    reason: Reason | None
    start_time: Epoch
    end_time: Epoch
    duration_s: Seconds
    max_rss_kb: Kibibytes | None  # this attempt's own peak, its process tree's, while it ran
    log_path: str | None
    stop_run: bool = False  # the executor says this failure must stop the whole run
    cpu_s: Seconds | None = None  # user + system CPU of its process tree while it ran
    # What its executor held before it (its own, when ready): the attempt's own use is
    # ``max_rss_kb`` less this. None where the attempt had its process to itself.
    base_rss_kb: Kibibytes | None = None
    caveat: Caveat | None = None  # a success with a note (no work found, ...)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Sign of life when nothing else is being said. From an agent, ``rss_kb``: what the
    quantum its child runs uses now (the child's process tree, less what it used when the
    quantum started); None when nothing runs."""

    rss_kb: Kibibytes | None = None


@dataclass(frozen=True, slots=True)
class Shutdown:
    """The broker tells a worker to stop: drop queued quanta, give the running one up to
    ``grace_s`` to finish (and report), then kill it and exit."""

    reason: str
    grace_s: Seconds


@dataclass(frozen=True, slots=True)
class Goodbye:
    """A worker tells the broker it is leaving (its running quantum, if any, is lost)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Revoke:
    """The broker takes back a prefetched quantum the worker has not started (another worker
    sits idle); the worker answers REVOKED, or nothing if it already started it."""

    quantum_id: str
    attempt: Attempt
    seq: Seq


@dataclass(frozen=True, slots=True)
class Preempt:
    """Memory pressure: the agent kills its executor child if it is running dispatch ``seq``
    (attempt ``attempt`` of ``quantum_id``) and reports the child's end (EXECUTOR_EXITED);
    the broker puts the quantum back. Ignored if that dispatch is not running."""

    quantum_id: str
    attempt: Attempt
    seq: Seq


@dataclass(frozen=True, slots=True)
class Revoked:
    """The worker dropped the queued quantum; its result will never come."""

    quantum_id: str
    attempt: Attempt


@dataclass(frozen=True, slots=True)
class ExecutorExited:
    """The agent's executor child ``generation`` ended (a crash, a timeout, recycling). It
    had taken the worker's ASSIGNs up to ``last_seq``: later ones never started. If it died
    running one (``running``), the other fields say how that attempt ended; the results of
    those it finished may still be on their way from its socket."""

    generation: Count
    last_seq: Seq
    running: bool
    status: ResultStatus
    exit_code: ExitStatus | None
    reason: Reason | None
    detail: str
    start_time: Epoch
    end_time: Epoch
    log_path: str | None
    max_rss_kb: Kibibytes | None = None  # the running attempt's peak as the agent watched it
    base_rss_kb: Kibibytes | None = None  # what the child held when ready (``Result``'s)


@dataclass(frozen=True, slots=True)
class StatusRequest:
    """A control client asks how the run is going."""


@dataclass(frozen=True, slots=True)
class Cancel:
    """A control client stops the run: drain (running quanta finish) or ``abort`` (kill)."""

    abort: bool


@dataclass(frozen=True, slots=True)
class StatusReply:
    """The broker's answer to STATUS_REQUEST or CANCEL: ``RunStatus.to_dict()``."""

    status: dict[str, Any]


Message = (
    Hello
    | Welcome
    | Ready
    | Refuse
    | Assign
    | Result
    | Heartbeat
    | Shutdown
    | Goodbye
    | StatusRequest
    | StatusReply
    | Cancel
    | Revoke
    | Revoked
    | ExecutorExited
    | Preempt
)


def _wire_name(cls: type[Any]) -> str:
    """``StatusRequest`` -> ``STATUS_REQUEST``: a message class's member of ``MessageType``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).upper()


# Every message class's wire type, derived from ``Message`` and ``MessageType`` (a class
# without a member, or a member without a class, fails at import).
MESSAGE_TYPES: Final[dict[type[Any], MessageType]] = {
    cls: MessageType[_wire_name(cls)] for cls in typing.get_args(Message)
}
if sorted(MESSAGE_TYPES.values()) != sorted(MessageType):
    raise ImportError("Message and MessageType disagree: a message class or type is missing")
