"""The dask engine: the broker core driven over an existing Dask distributed cluster.

The core decides; Dask only carries: every Dask worker is a worker of the core (its threads
plus ``prefetch`` as slots), a dispatch is one ``client.submit`` of the ASSIGN frame to that
worker under a key of its own (run, quantum, attempt), never reused, with Dask's retries off;
results come back as RESULT frames. A worker that leaves the scheduler is a worker lost (the
core retries its quanta under a new attempt). Quanta run in warm executor children of ours
(``worker.dask_plugin``), which enforce timeouts by killing process groups. Imports
``distributed``: only used with ``engine="dask"``.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import replace
from typing import Any, assert_never

import zmq
from distributed import Client, Future

from broker.core import BrokerCore, check_requests
from broker.core.events import (
    Action,
    AdmitWorker,
    Dispatch,
    Event,
    ForgetWorker,
    KillWorker,
    PreemptQuantum,
    QuantumRevoked,
    RefuseWorker,
    ResultReceived,
    RevokeQuantum,
    ShutdownWorker,
    SpawnWorkers,
    StopRequested,
    StopRun,
    WorkerHeard,
    WorkerJoined,
    WorkerLeft,
    WorkerReady,
)
from broker.core.planner import TransportProfile
from broker.drivers.dask_cluster import STREAM_INTERVAL_S, DaskTarget, connect, lower_latency
from broker.drivers.progress import Progress
from broker.journal import Journal
from broker.transport.control_endpoint import ControlEndpoint
from common.codec import AssignFrames, decode
from common.config import ExecutionConfig
from common.errors import ProtocolError
from common.graph import QuantumGraph
from common.protocol import Result
from common.resources import CPUS, MEMORY
from worker.dask_plugin import (
    PLUGIN_NAME,
    ExecutorPlugin,
    kill_running,
    renew_lease,
    revoke_assign,
    run_assign,
)

__all__ = ["DaskTarget", "run_on_dask"]

logger = logging.getLogger(__name__)

_POLL_S = 1.0  # how often the scheduler's worker list is read
_LEASE_S = 10.0  # executor children die this long after the driver stops renewing


def transport_profile(config: ExecutionConfig) -> TransportProfile:
    """What dispatching through Dask costs: a trip of ~10 ms (driver -> scheduler -> worker
    and back); a worker holds 2 to 16 quanta per thread (enough to cover the trip with the
    quanta's mean duration, so short quanta keep workers busy and long ones are not pinned
    early) plus ``prefetch``. Submissions go in batches (a worker is refilled once it holds
    half its capacity or less: one graph update for several quanta), so a worker keeps its
    minimum whatever the order rules would say; the plan changes at most every second."""
    return TransportProfile(
        0.010, 2, 16, extra=config.prefetch, order_rules=False, replan_every_s=_POLL_S, batch=True
    )


class _Driver:
    """One run of the core on Dask; ``run()`` returns when the core says the run is over."""

    def __init__(
        self,
        core: BrokerCore,
        client: Client,
        config: ExecutionConfig,
        boot: tuple[bytes, str, list[str]],
        control: ControlEndpoint | None = None,
    ) -> None:
        self.core = core
        self._control = control
        # Finished futures are queued from Dask's thread and wake the loop through a pipe,
        # beside the control socket: the loop sleeps until one of them or a deadline.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._poller = zmq.Poller()
        self._poller.register(self._wake_r, zmq.POLLIN)
        if control is not None:
            self._poller.register(control.socket, zmq.POLLIN)
        self._graph = core.graph
        self._assigns = AssignFrames(core.graph)
        self._client = client
        self._config = config
        self._boot = boot
        self._run_id = uuid.uuid4().hex[:12]
        self._done: queue.Queue[Future[None]] = queue.Queue()
        self._results: queue.Queue[bytes] = queue.Queue()  # RESULT frames, as events
        self._topic = f"zmpexec-results-{self._run_id}"
        # (quantum index, attempt) -> (worker, future) of what Dask holds for us
        self._futures: dict[tuple[int, int], tuple[bytes, Future[None]]] = {}
        self._retaken: dict[tuple[int, int], int] = {}  # revokes of an attempt, for its key
        self._known: dict[str, bytes] = {}  # Dask worker address -> identity
        self._events: list[Event] = []  # of our own making, for the next step
        self._restores: list[Callable[[], None]] = []  # of Dask settings changed for the run
        self._next_poll = 0.0
        self._next_lease = 0.0
        self._stop: StopRequested | None = None
        # Reentrant: a signal handler may request a stop while this thread holds it.
        self._lock = threading.RLock()
        self.progress = Progress(None, config.progress_interval_s)

    def request_stop(self, reason: str, *, graceful: bool = True) -> None:
        """Safe from a signal handler (the lock is reentrant) and from other threads."""
        with self._lock:
            self._stop = StopRequested(reason, graceful=graceful)
        self._wake()

    def run(self) -> None:
        comm = getattr(self._client, "scheduler_comm", None)
        if comm is not None and hasattr(comm, "interval"):
            interval = comm.interval
            comm.interval = min(interval, STREAM_INTERVAL_S)
            self._restores.append(lambda: setattr(comm, "interval", interval))
        self._client.register_plugin(
            ExecutorPlugin(self._boot, _LEASE_S, STREAM_INTERVAL_S), name=PLUGIN_NAME
        )
        # Results ride the worker's event stream (worker -> scheduler -> us, pushed): fetching
        # each task's result would cost a round trip to its worker.
        self._client.subscribe_topic(self._topic, self._on_result_event)
        try:
            actions = self.core.start(time.monotonic())
            while True:
                self._carry_out(actions)
                if self.core.over:
                    return
                events = self._wait(time.monotonic())
                actions = self.core.step(events, time.monotonic())
        finally:
            self._cleanup()

    # ------------------------------------------------------------------ events
    def _wait(self, now: float) -> list[Event]:
        """Events seen by the next wake-up: finished futures, workers joining or leaving."""
        deadline = self.core.next_deadline(now)
        until = min(self._next_poll, deadline if deadline is not None else self._next_poll)
        timeout = 0 if self._events else max(0, int((until - now) * 1000) + 1)
        ready = dict(self._poller.poll(timeout))
        events, self._events = self._events, []
        if self._wake_r in ready:
            os.read(self._wake_r, 65536)
        try:
            while True:
                events += self._result(self._results.get_nowait())
        except queue.Empty:
            pass
        try:
            while True:
                events += self._finished(self._done.get_nowait())
        except queue.Empty:
            pass
        now = time.monotonic()
        if self._control is not None:
            stop = self._control.serve(lambda: self.core.status(now), now)
            if stop is not None:
                events.append(stop)
        if now >= self._next_poll:
            events += self._poll_workers()
            self._next_poll = now + _POLL_S
        if now >= self._next_lease:
            try:
                self._client.run(renew_lease)
            except Exception as e:  # a worker leaving meanwhile: its children die with it
                logger.info("lease renewal did not reach every worker: %s", e)
            self._next_lease = now + _LEASE_S / 3
        with self._lock:
            if self._stop is not None:
                events.append(self._stop)
                self._stop = None
        self.progress.tick(self.core.status, now)
        return events

    def _result(self, frame: bytes) -> list[Event]:
        try:
            result = decode(frame)
        except ProtocolError as e:
            logger.error("dropping a bad result frame: %s", e)
            return []
        if not isinstance(result, Result) or result.quantum_id not in self._graph:
            return []
        entry = self._futures.pop((self._graph.index(result.quantum_id), result.attempt), None)
        if entry is None:
            return []  # cancelled or superseded meanwhile
        return [ResultReceived(entry[0], result)]

    def _finished(self, future: Future[None]) -> list[Event]:
        tag = self._tag(str(future.key))
        entry = self._futures.get(tag)
        if entry is None or entry[1] is not future:
            return []  # cancelled, revoked or superseded
        worker = entry[0]
        self._futures.pop(tag)
        if future.status == "cancelled":
            return []
        # An error of Dask's own (the shim returns frames): the worker died under the task.
        # (KilledWorker is built by the scheduler; a task's exception never comes back.)
        error = type(future.exception()).__name__
        return [WorkerLeft(worker, f"dask worker {worker.decode()} lost {future.key}: {error}")]

    def _poll_workers(self) -> list[Event]:
        workers = self._client.scheduler_info(n_workers=-1)["workers"]
        events: list[Event] = []
        joined = [a for a in workers if a not in self._known]
        if joined:
            self._restores.append(lower_latency(self._client, joined))
        for address, info in workers.items():
            identity = self._known.get(address)
            if identity is None:
                identity = self._known[address] = address.encode()
                threads = int(info.get("nthreads", 1))
                host = str(info.get("host", address))
                pid = int(info.get("pid", 0)) or 1
                # (no limit of its own: how many quanta it holds is the planner's call)
                offers = dask_resources(info.get("resources"))
                hello = WorkerJoined(identity, pid, host, 0, False, address, threads, offers)
                events += [hello, WorkerReady(identity)]
            else:
                events.append(WorkerHeard(identity))
        for address in [a for a in self._known if a not in workers]:
            identity = self._known.pop(address)
            events.append(WorkerLeft(identity, f"dask worker {address} left the cluster"))
        return events

    # ------------------------------------------------------------------ actions
    def _carry_out(self, actions: list[Action]) -> None:
        dispatches: dict[bytes, list[Dispatch]] = {}
        for action in actions:
            match action:
                case Dispatch(worker=worker):
                    dispatches.setdefault(worker, []).append(action)
                case ShutdownWorker(final=True) | StopRun():
                    dispatches = {}  # the run is over: what it held is cancelled
                    self._cancel_all()
                case (
                    ShutdownWorker()
                    | AdmitWorker()
                    | RefuseWorker()
                    | KillWorker()
                    | SpawnWorkers()
                ):
                    pass  # Dask owns its workers: nothing to tell them or kill
                case RevokeQuantum():
                    self._revoke(action)
                case PreemptQuantum():
                    pass  # (Dask workers report no measurements: the watch stops none here)
                case ForgetWorker(worker=worker):
                    dispatches.pop(worker, None)
                    self._forget(worker)
                case _:
                    assert_never(action)
        self._submit(dispatches)

    def _forget(self, worker: bytes) -> None:
        """The core wrote ``worker`` off: what Dask holds for it is cancelled (its tasks are
        pinned to it and would wait for it forever; the core has retried them)."""
        lost = [k for k, (w, _) in self._futures.items() if w == worker]
        if lost:
            self._client.cancel([self._futures.pop(k)[1] for k in lost], force=True)
        # Still in the cluster, it joins again at the next poll, as a new worker
        self._known.pop(worker.decode(), None)

    def _key(self, i: int, attempt: int) -> str:
        """The Dask key of one dispatch of an attempt: never reused (an attempt dispatched
        again after a revoke gets a suffix)."""
        retaken = self._retaken.get((i, attempt))
        key = f"zmpexec-{self._run_id}-{i}-{attempt}"
        return key if retaken is None else f"{key}-r{retaken}"

    @staticmethod
    def _tag(key: str) -> tuple[int, int]:
        """(quantum index, attempt) of one of our keys."""
        _, _, i, attempt, *_ = key.split("-")
        return int(i), int(attempt)

    def _submit(self, dispatches: dict[bytes, list[Dispatch]]) -> None:
        """One ``client.map`` per worker: a call costs more than the quanta it carries."""
        for worker, batch in dispatches.items():
            frames = [
                self._assigns.frame(d.index, d.attempt, d.timeout_s, d.seq, 0, d.memory_mb, d.cpus)
                for d in batch
            ]
            keys = [self._key(d.index, d.attempt) for d in batch]
            futures = self._client.map(
                run_assign,
                frames,
                [self._topic] * len(batch),
                keys,
                key=keys,
                workers=[worker.decode()],
                allow_other_workers=False,
                retries=0,
                pure=False,
                priority=-batch[0].index,
            )
            for d, future in zip(batch, futures, strict=True):
                self._futures[d.index, d.attempt] = (worker, future)
                future.add_done_callback(self._on_done)

    def _revoke(self, revoke: RevokeQuantum) -> None:
        """Ask the worker's plugin to take a queued task back: a yes is QuantumRevoked (and
        the Dask task is cancelled); a no means it started, and its result will come."""
        tag = (self._graph.index(revoke.quantum_id), revoke.attempt)
        entry = self._futures.get(tag)
        if entry is None:
            return
        address = revoke.worker.decode()
        try:
            answer = self._client.run(revoke_assign, str(entry[1].key), workers=[address])
        except Exception as e:  # the worker is leaving: the poll will tell
            logger.info("could not revoke %s on %s: %s", revoke.quantum_id, address, e)
            return
        if answer.get(address) is True:
            future = entry[1]
            self._futures.pop(tag)
            self._retaken[tag] = self._retaken.get(tag, 0) + 1
            self._client.cancel([future])
            self._events.append(QuantumRevoked(revoke.worker, revoke.quantum_id, revoke.attempt))

    def _on_done(self, future: Future[None]) -> None:
        """In Dask's thread: queue a future that ended without its RESULT and wake the loop
        (a finished one's RESULT comes as an event)."""
        if future.status == "finished":
            return
        self._done.put(future)
        self._wake()

    def _on_result_event(self, event: tuple[float, bytes]) -> None:
        """In Dask's thread: a RESULT frame a worker published."""
        self._results.put(event[1])
        self._wake()

    def _wake(self) -> None:
        with self._lock:  # never write to the pipe's fd number once it is closed (reused)
            if self._wake_w < 0:
                return
            try:
                os.write(self._wake_w, b"!")
            except BlockingIOError:
                pass  # the pipe is full: the loop is awake already

    def _cancel_all(self) -> None:
        """Nothing new starts; running quanta are killed (Dask cannot stop a running task:
        our plugin kills the children), queued ones cancelled."""
        futures = [f for _, f in self._futures.values()]
        self._futures.clear()
        if futures:
            self._client.cancel(futures, force=True)
            try:
                self._client.run(kill_running)
            except Exception as e:  # a worker gone meanwhile: its children died with it
                logger.warning("could not reach every dask worker to stop quanta: %s", e)

    def _cleanup(self) -> None:
        self._client.unsubscribe_topic(self._topic)
        self._cancel_all()
        with self._lock:
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_w = -1
        try:
            self._client.unregister_worker_plugin(PLUGIN_NAME)  # teardown kills children
        except Exception as e:
            logger.warning("could not remove the zmpexec plugin from every worker: %s", e)
        for restore in reversed(self._restores):
            restore()


def dask_resources(declared: object) -> dict[str, float] | None:
    """A Dask worker's ``--resources`` in our names: ``MEMORY`` (MB) is memory, ``CPU`` is
    cpus, any other name is a custom resource as spelled."""
    if not isinstance(declared, dict) or not declared:
        return None
    names = {"MEMORY": MEMORY, "CPU": CPUS}
    return {names.get(str(k), str(k)): float(v) for k, v in declared.items()}


def cluster_budgets(
    config: ExecutionConfig, offers: list[dict[str, float] | None]
) -> ExecutionConfig:
    """``config`` with the budgets of a cluster whose workers offer ``offers``: where the
    user set none, a resource every worker declares is budgeted at their sum (and the host's
    default memory, which says nothing of another host's, is dropped); custom resources at
    the sum of those offering them."""
    declared = [o or {} for o in offers]
    memory, from_host = config.memory_mb, config.memory_from_host
    if from_host:
        every = declared and all(MEMORY in o for o in declared)
        memory = sum(o[MEMORY] for o in declared) if every else None
        from_host = False
    custom = dict(config.resources or {})
    for o in declared:
        for name, amount in o.items():
            if name not in (MEMORY, CPUS) and name not in (config.resources or {}):
                custom[name] = custom.get(name, 0.0) + amount
    return replace(config, memory_mb=memory, memory_from_host=from_host, resources=custom or None)


def _check_fits_a_worker(
    graph: QuantumGraph,
    config: ExecutionConfig,
    offers: list[dict[str, float] | None],
    done: Collection[int],
) -> None:
    """GraphError naming the quanta no single worker could run: each must fit what one
    worker offers, where the workers declare a resource (the largest offer of each)."""
    declared = [o for o in offers if o]
    if not declared:
        return
    largest: dict[str, float] = {}
    for o in declared:
        for name, amount in o.items():
            largest[name] = max(largest.get(name, 0.0), amount)
    custom = {k: v for k, v in largest.items() if k not in (MEMORY, CPUS)}
    one = replace(
        config,
        memory_mb=largest.get(MEMORY, config.memory_mb),
        cpus=int(largest[CPUS]) if CPUS in largest else config.cpus,
        resources={**(config.resources or {}), **custom} or None,
    )
    check_requests(graph, one, done)


def run_on_dask(
    graph: QuantumGraph,
    config: ExecutionConfig,
    target: DaskTarget,
    boot: tuple[bytes, str, list[str]],
    *,
    journal: Journal | None,
    done: Collection[int],
    on_driver: Any = None,
    control_endpoint: str | None = None,
) -> BrokerCore:
    """Run ``graph`` on the Dask cluster ``target`` names; returns the finished core."""
    with connect(target, config.num_workers) as (client, local):
        # A local cluster's workers are awaited before dispatching, as local agents are.
        held = replace(config, local_workers=config.num_workers if local else 0)
        if not local:
            workers = client.scheduler_info(n_workers=-1)["workers"].values()
            offers = [dask_resources(w.get("resources")) for w in workers]
            held = cluster_budgets(held, offers)
            _check_fits_a_worker(graph, held, offers, done)
        core = BrokerCore(
            graph, held, journal=journal, done=done, transport=transport_profile(config)
        )
        control = ControlEndpoint(control_endpoint) if control_endpoint else None
        try:
            driver = _Driver(core, client, config, boot, control)
            if on_driver is not None:
                on_driver(driver)
            driver.run()
        finally:
            if control is not None:
                control.close()
        return core
