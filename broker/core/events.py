"""What the broker core takes (events a driver observed) and what it returns (actions for the
driver to carry out). Plain records: no behaviour, no transport.

Workers are named by an opaque ``bytes`` key chosen by the driver (a ZeroMQ identity, a Dask
worker address, ...); the core never interprets it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from common.protocol import ExecutorExited, Result

__all__ = [
    "Action",
    "AdmitWorker",
    "Dispatch",
    "Event",
    "ExecutorGone",
    "ExecutorUnreachable",
    "ForgetWorker",
    "HostMemory",
    "KillWorker",
    "PreemptQuantum",
    "ProcessExited",
    "ProcessStarted",
    "QuantumRevoked",
    "RefuseWorker",
    "ResultReceived",
    "RevokeQuantum",
    "ShutdownWorker",
    "SpawnFailed",
    "SpawnWorkers",
    "StopRequested",
    "StopRun",
    "WorkerCapacity",
    "WorkerHeard",
    "WorkerJoined",
    "WorkerLeft",
    "WorkerReady",
]


# ---------------------------------------------------------------------- events
@dataclass(frozen=True, slots=True)
class WorkerJoined:
    """A worker introduced itself: ``slots`` quanta it accepts at once at most (0: no limit
    of its own; how many it is given is the planner's call), ``threads`` it runs at once.
    ``local`` workers are processes the driver can kill. ``name`` overrides the generated
    worker id (``w1``, ``w2``, ...)."""

    worker: bytes
    pid: int
    host: str
    slots: int
    local: bool
    name: str | None = None
    threads: int = 1
    # what the worker itself offers (memory in MiB, cpus, custom names; a Dask worker's
    # --resources): the quanta it holds must fit them, as well as the run's budgets
    resources: Mapping[str, float] | None = None


@dataclass(frozen=True, slots=True)
class HostMemory:
    """The host the local workers run on has this much memory available now (MiB)."""

    available_mb: float


@dataclass(frozen=True, slots=True)
class WorkerReady:
    """The worker's executor is loaded: it can take quanta. ``generation`` numbers the
    worker's executor children (a replacement says READY again); 0 where there are none."""

    worker: bytes
    generation: int = 0


@dataclass(frozen=True, slots=True)
class ExecutorGone:
    """The worker's executor child ``exited.generation`` ended: the worker takes no quanta
    until its replacement is READY, and what was sent to the old one is settled by
    ``exited`` (failed if it was running, given back if never taken, awaited if finished)."""

    worker: bytes
    exited: ExecutorExited


@dataclass(frozen=True, slots=True)
class ExecutorUnreachable:
    """The worker's executor child ``generation`` cannot be sent to (it is gone): the worker
    takes nothing new until its agent's report (``ExecutorGone``) and a READY from the next."""

    worker: bytes
    generation: int


@dataclass(frozen=True, slots=True)
class WorkerCapacity:
    """The worker now accepts ``slots`` quanta at once at most (running and queued); how many
    it is given within that is the planner's call."""

    worker: bytes
    slots: int


@dataclass(frozen=True, slots=True)
class WorkerHeard:
    """The worker's agent itself is alive: it sent something (a heartbeat, a report of its
    own). The only proof of the agent's liveness: what its executor child sends proves the
    child, not the agent that supervises it. ``rss_kb``: what the quantum running there uses
    now, as the agent measured it (None: nothing running, or not measured)."""

    worker: bytes
    rss_kb: int | None = None


@dataclass(frozen=True, slots=True)
class ProcessStarted:
    """The driver started a local worker process, as a ``SpawnWorkers`` asked."""

    pid: int


@dataclass(frozen=True, slots=True)
class SpawnFailed:
    """The driver could not start ``count`` of the local worker processes ``SpawnWorkers``
    asked for (it stops at the first that fails: one failed start)."""

    why: str
    count: int = 1


@dataclass(frozen=True, slots=True)
class ProcessExited:
    """A local worker process ended (registered or not); ``why`` says how ("killed by
    signal 9 (SIGKILL)")."""

    pid: int
    why: str


@dataclass(frozen=True, slots=True)
class ResultReceived:
    """A worker reports how an attempt ended."""

    worker: bytes
    result: Result


@dataclass(frozen=True, slots=True)
class QuantumRevoked:
    """A worker gave back a prefetched quantum it had not started."""

    worker: bytes
    quantum_id: str
    attempt: int


@dataclass(frozen=True, slots=True)
class WorkerLeft:
    """The worker is gone (said goodbye, its process exited, it cannot be reached)."""

    worker: bytes
    why: str


@dataclass(frozen=True, slots=True)
class StopRequested:
    """Stop dispatching. ``graceful``: running quanta get the shutdown grace to finish."""

    reason: str
    graceful: bool = False


Event = (
    WorkerJoined
    | HostMemory
    | WorkerReady
    | ExecutorGone
    | ExecutorUnreachable
    | WorkerCapacity
    | WorkerHeard
    | ProcessStarted
    | SpawnFailed
    | ProcessExited
    | ResultReceived
    | QuantumRevoked
    | WorkerLeft
    | StopRequested
)


# ---------------------------------------------------------------------- actions
@dataclass(frozen=True, slots=True)
class AdmitWorker:
    """Welcome the worker under ``worker_id``."""

    worker: bytes
    worker_id: str


@dataclass(frozen=True, slots=True)
class RefuseWorker:
    """Tell a peer that is not (or no longer) a registered worker to go away."""

    worker: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Send attempt ``attempt`` of quantum ``quantum_id`` to ``worker``. A follow-on
    (``after``) is sent while its last unfinished parent runs there, to start without a round
    trip once that parent succeeds; a driver that cannot honour ``after`` must not ask for
    follow-ons (``BrokerCore(follow_ons=False)``)."""

    worker: bytes
    quantum_id: str
    attempt: int
    timeout_s: float | None
    index: int  # the quantum's index in the graph (``graph.quantum_at``)
    seq: int = 0  # the worker's dispatches, numbered in the order they are sent
    after: int = 0  # a follow-on: run only if dispatch ``after`` succeeded there (0: none)
    memory_mb: float | None = None  # the declared memory it is held to (None: not declared)
    cpus: int | None = None  # the cores it declares (None: it counts one)


@dataclass(frozen=True, slots=True)
class PreemptQuantum:
    """Stop attempt ``attempt`` of ``quantum_id`` if ``worker`` runs it (dispatch ``seq``):
    memory pressure. The worker reports its executor's end as for any other (EXECUTOR_EXITED);
    the core puts the quantum back."""

    worker: bytes
    quantum_id: str
    attempt: int
    seq: int


@dataclass(frozen=True, slots=True)
class RevokeQuantum:
    """Ask ``worker`` to give back a prefetched quantum it has not started."""

    worker: bytes
    quantum_id: str
    attempt: int
    seq: int = 0


@dataclass(frozen=True, slots=True)
class KillWorker:
    """Kill a local worker process with everything it started (lost, not enforcing a timeout,
    or never registering: ``worker`` None) so it cannot come back."""

    worker: bytes | None
    pid: int


@dataclass(frozen=True, slots=True)
class ForgetWorker:
    """The core has written ``worker`` off, however it was lost (its process ended, it fell
    silent, left, was stuck or did not enforce a timeout): the driver drops everything it
    keeps for it. The one way a driver learns of a loss."""

    worker: bytes


@dataclass(frozen=True, slots=True)
class SpawnWorkers:
    """Start ``count`` local worker processes; report each as ``ProcessStarted`` (or
    ``SpawnFailed``)."""

    count: int


@dataclass(frozen=True, slots=True)
class ShutdownWorker:
    """Tell ``worker`` to stop after ``grace_s``; ``final``: the run is over (attached workers
    acknowledge with GOODBYE, which the driver may wait for)."""

    worker: bytes
    reason: str
    grace_s: float
    final: bool = False


@dataclass(frozen=True, slots=True)
class StopRun:
    """The run is over (every quantum ended, or it was stopped): the driver cleans up."""

    reason: str | None
    cancelled: int = 0  # quanta that never ended


Action = (
    AdmitWorker
    | RefuseWorker
    | Dispatch
    | RevokeQuantum
    | PreemptQuantum
    | KillWorker
    | ForgetWorker
    | SpawnWorkers
    | ShutdownWorker
    | StopRun
)
