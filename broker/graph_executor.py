"""``MPGraphExecutor``: the public entry point with the shape of LSST's executor. Validates and
fixes up the graph, then runs it in-process (``numProc == 1``) or through a broker and workers.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import networkx as nx

from broker.control import ENDPOINT_FILE
from broker.core import BrokerCore, RunTimings, check_requests
from broker.drivers.in_process import run_in_process
from broker.drivers.progress import ProgressCallback
from broker.drivers.zmq_server import BrokerServer, Serving
from broker.journal import Journal
from broker.resources import resource_options
from common.butler import Butler
from common.config import ExecutionConfig
from common.errors import ConfigError, GraphError, MPGraphExecutorError
from common.graph import QuantumGraph
from common.keys import create_keys
from common.report import Report
from worker.executor import QuantumExecutor

__all__ = ["ExecutionGraphFixup", "MPGraphExecutor"]

logger = logging.getLogger(__name__)

_IPC_PATH_LIMIT = 107  # bytes in sun_path, without the terminating NUL


class ExecutionGraphFixup(Protocol):
    """Adds ordering edges to the execution graph (it must not add or remove quanta)."""

    def fixup_graph(self, xgraph: nx.DiGraph[str]) -> nx.DiGraph[str] | None: ...


def _endpoint_for(requested: str | None) -> tuple[Path | None, str]:
    """The endpoint to bind and the private directory made for it (removed after the run)."""
    if requested is None:
        path = Path(tempfile.mkdtemp(prefix="zq", dir="/tmp"))  # mkdtemp makes it mode 0700
        endpoint = f"ipc://{path}/broker.sock"
        if len(endpoint.encode()) - len("ipc://") > _IPC_PATH_LIMIT:
            shutil.rmtree(path, ignore_errors=True)
            raise ConfigError(f"ipc path {endpoint} exceeds {_IPC_PATH_LIMIT} bytes")
        return path, endpoint
    if requested.startswith("ipc://"):
        sock = Path(requested.removeprefix("ipc://"))
        if len(str(sock).encode()) > _IPC_PATH_LIMIT:
            raise ConfigError(
                f"ipc path {sock} is {len(str(sock).encode())} bytes; "
                f"the limit is {_IPC_PATH_LIMIT}"
            )
        if not sock.parent.is_dir():
            raise ConfigError(f"ipc endpoint directory {sock.parent} does not exist")
    return None, requested


@contextlib.contextmanager
def _published(requested: str | None, run_dir: Path) -> Iterator[str]:
    """The run's endpoint (``_endpoint_for``), written into ``run_dir`` for ``zmpexec status``,
    ``cancel`` and ``worker`` while the run lasts; removed, with its private directory, after."""
    sock_dir, endpoint = _endpoint_for(requested)
    try:
        (run_dir / ENDPOINT_FILE).write_text(endpoint + "\n")
        yield endpoint
    finally:
        (run_dir / ENDPOINT_FILE).unlink(missing_ok=True)
        if sock_dir is not None:
            shutil.rmtree(sock_dir, ignore_errors=True)


class MPGraphExecutor:
    """Runs a QuantumGraph with ``numProc`` persistent worker processes.

    ``timeout`` is the per-quantum timeout in seconds (a quantum's own ``timeout_s`` wins).
    ``pdb`` names a debugger module (e.g. ``"pdb"``) for post-mortem; only with ``numProc == 1``,
    which runs in this process. Options: ``heartbeat_interval_s``, ``liveness``, ``retries``,
    ``run_dir``, ``resume`` (skip what an earlier run in ``run_dir`` finished),
    ``startup_timeout_s``, ``shutdown_grace_s``, ``prefetch``, ``progress`` (a
    callable given a ``Progress`` snapshot every ``progress_interval_s``). ``engine="dask"``
    runs on Dask distributed: ``dask_client`` (a ``Client``), or ``dask_scheduler`` /
    ``dask_scheduler_file`` (with ``dask_security``, Dask's ``Security``), else a local
    cluster of ``numProc`` single-threaded workers.

    Resources (``broker.resources.resource_options``): ``memory`` (a size such as ``"16GB"``
    or MB; default: the host's available memory less a reserve), ``cpus`` (default: the larger
    of ``numProc`` and the CPUs this process may use), ``resources`` (``{"db": 2}``),
    ``memory_per_quantum`` / ``cores_per_quantum`` (for quanta that declare nothing),
    ``bps_config`` (a BPS submit YAML's requests, multiplier, max and retries),
    ``memory_enforce`` (``"kill"``, ``"warn"``, ``"off"``), ``memory_multiplier``,
    ``memory_max``, ``retry_unless_exit`` (exit codes), ``max_failures``.
    """

    def __init__(
        self,
        numProc: int,
        timeout: float | None,
        quantumExecutor: QuantumExecutor,
        *,
        startMethod: str | None = None,
        failFast: bool = False,
        pdb: str | None = None,
        executionGraphFixup: ExecutionGraphFixup | None = None,
        **options: Any,
    ) -> None:
        run_dir = options.pop("run_dir", None)
        self._resume = bool(options.pop("resume", False))
        self._engine = options.pop("engine", "local")
        if self._engine not in ("local", "dask"):
            raise ConfigError(f"engine must be 'local' or 'dask', not {self._engine!r}")
        self._dask = {
            k: options.pop(k, None)
            for k in ("dask_client", "dask_scheduler", "dask_scheduler_file", "dask_security")
        }
        if self._resume and run_dir is None:
            raise ConfigError("resume needs the run_dir of the run to continue")
        self._on_progress: ProgressCallback | None = options.pop("progress", None)
        options = resource_options(numProc, options)
        self._config = ExecutionConfig(
            num_workers=numProc,
            timeout_s=timeout,
            fail_fast=failFast,
            start_method=startMethod or "spawn",
            run_dir=Path(run_dir) if run_dir is not None else None,
            **options,
        )
        if pdb is not None and numProc > 1:
            logger.warning("pdb post-mortem only works with numProc == 1; ignored")
        if timeout is not None and self._config.in_process:
            warnings.warn(
                f"timeout={timeout:g}s is not enforced with numProc == 1 (quanta run in this "
                "process, as with LSST's executor); use numProc >= 2 to enforce it",
                RuntimeWarning,
                stacklevel=2,
            )
        self._executor = quantumExecutor
        self._pdb = pdb
        self._fixup = executionGraphFixup
        self._report: Report | None = None
        self._server: BrokerServer | None = None
        self._dask_driver: Any = None  # the dask engine's driver while execute() runs
        self.timings: RunTimings | None = None
        self.endpoint: str | None = None  # the broker's endpoint while execute() runs
        self._stop_requested: str | None = None

    @property
    def config(self) -> ExecutionConfig:
        return self._config

    def getReport(self) -> Report:
        if self._report is None:
            raise RuntimeError("no report: execute() has not run")
        return self._report

    def request_stop(self, reason: str = "interrupted", *, graceful: bool = True) -> None:
        """Stop a running ``execute()`` (e.g. from a signal handler): no new quanta start;
        running ones get ``shutdown_grace_s`` to finish unless not ``graceful``; the rest is
        cancelled. Safe from a signal handler."""
        self._stop_requested = reason
        if self._server is not None:
            self._server.request_stop(reason, graceful=graceful)
        if self._dask_driver is not None:
            self._dask_driver.request_stop(reason, graceful=graceful)

    def execute(self, graph: QuantumGraph, butler: Butler) -> None:
        """Run every quantum; raise MPGraphExecutorError (MPTimeoutError) if any did not
        succeed. The report is available from getReport() either way."""
        graph = self._fixed_up(graph)
        graph.validate(butler)
        check_requests(graph, self._config)  # (quanta an earlier run finished included)
        if isinstance(butler, Butler) and (removed := butler.remove_partial_writes()):
            logger.warning("removed %d partial write(s) left by killed processes", removed)
        self._stop_requested = None
        run_dir = self._config.run_dir or Path(tempfile.mkdtemp(prefix="zmpexec-run-"))
        journal = Journal(run_dir / "journal.sqlite3", resume=self._resume)
        try:
            done = finished_earlier(graph, butler, journal) if self._resume else []
            if done:
                logger.warning("resuming: %d of %d quanta finished earlier", len(done), len(graph))
            run = _Run(graph, butler, run_dir / "logs", journal, done)
            run.log_dir.mkdir(parents=True, exist_ok=True)
            if self._engine == "dask":
                core = self._run_on_dask(run)
            elif self._config.in_process:
                core = self._run_in_process(run)
            else:
                core = self._run_with_broker(run)
        finally:
            journal.close()
        error = core.error()
        fatal = core.fatal
        if fatal:  # why the run could not go on comes first (then what it left undone)
            error = MPGraphExecutorError(fatal if error is None else f"{fatal}: {error}")
        self._report = core.report(error)
        if error is not None:
            raise error

    # ------------------------------------------------------------------ preparation
    def _fixed_up(self, graph: QuantumGraph) -> QuantumGraph:
        if self._fixup is None:
            return graph
        before = graph.xgraph
        xgraph = before.copy()
        out = self._fixup.fixup_graph(xgraph)
        xgraph = xgraph if out is None else out
        if set(xgraph.nodes) != set(before.nodes) or not set(before.edges) <= set(xgraph.edges):
            raise MPGraphExecutorError("execution graph fixup may only add ordering edges")
        added = [e for e in xgraph.edges if e not in before.edges]
        try:
            return graph.with_edges(added)
        except GraphError as e:
            raise MPGraphExecutorError(f"execution graph fixup made a cycle: {e}") from e

    # ------------------------------------------------------------------ in-process
    def _run_in_process(self, run: _Run) -> BrokerCore:
        return run_in_process(
            run.graph,
            self._config,
            self._executor,
            run.butler,
            journal=run.journal,
            done=run.done,
            log_dir=run.log_dir,
            pdb=self._pdb,
            stop_requested=lambda: self._stop_requested,
        )

    # ------------------------------------------------------------------ dask
    def _run_on_dask(self, run: _Run) -> BrokerCore:
        try:
            from broker.drivers.dask_cluster import DaskTarget
            from broker.drivers.dask_engine import run_on_dask
        except ImportError as e:
            raise ConfigError(f"the dask engine needs pip install -e '.[dask]' ({e})") from e
        preload = sorted(run.graph.task_modules() | set(self._executor_modules(run)))
        boot = (self._executor_blob(run), str(run.log_dir), preload)
        target = DaskTarget(
            self._dask["dask_client"],
            self._dask["dask_scheduler"],
            self._dask["dask_scheduler_file"],
            self._dask["dask_security"],
        )

        def keep(driver: Any) -> None:
            self._dask_driver = driver
            driver.progress.callback = self._on_progress
            if self._stop_requested is not None:
                driver.request_stop(self._stop_requested)

        with _published(None, run.log_dir.parent) as endpoint:  # for zmpexec status / cancel
            try:
                core = run_on_dask(
                    run.graph,
                    self._config,
                    target,
                    boot,
                    journal=run.journal,
                    done=run.done,
                    on_driver=keep,
                    control_endpoint=endpoint,
                )
            finally:
                self._dask_driver = None
        self.timings = core.timings
        return core

    def _executor_modules(self, run: _Run) -> tuple[str, ...]:
        """Where the executor's and the butler's classes live: executor children import them
        in their forkserver too, so a replacement child (after a timeout, a crash or
        recycling) does not import them again before it can run anything."""
        modules = {type(self._executor).__module__, type(run.butler).__module__}
        return tuple(sorted(m for m in modules if m not in ("__main__", "builtins")))

    def _executor_blob(self, run: _Run) -> bytes:
        try:
            return pickle.dumps((self._executor, run.butler))
        except Exception as e:
            raise MPGraphExecutorError(f"the quantum executor cannot be pickled: {e}") from e

    # ------------------------------------------------------------------ broker
    def _run_with_broker(self, run: _Run) -> BrokerCore:
        blob = self._executor_blob(run)
        run_dir = run.log_dir.parent
        keys_dir = None
        requested = self._config.endpoint
        if requested is not None and requested.startswith("tcp://"):
            # Before the endpoint is published: a worker that finds it finds the keys whole.
            keys_dir = run_dir / "curve"
            create_keys(keys_dir)
        with _published(requested, run_dir) as endpoint:
            serving = Serving(endpoint, run.log_dir, blob, keys_dir, self._executor_modules(run))
            server = self._server = BrokerServer(
                run.graph,
                self._config,
                serving,
                on_progress=self._on_progress,
                journal=run.journal,
                done=run.done,
            )
            if self._stop_requested is not None:
                server.request_stop(self._stop_requested)
            self.endpoint = endpoint
            try:
                server.run()
            finally:
                self.endpoint = None
            self.timings = server.timings
        return server.core


@dataclass(frozen=True, slots=True)
class _Run:
    """What one execute() call works on."""

    graph: QuantumGraph
    butler: Butler
    log_dir: Path
    journal: Journal
    done: list[int]  # indices of quanta an earlier run finished


def finished_earlier(graph: QuantumGraph, butler: Butler, journal: Journal) -> list[int]:
    """Quanta an earlier run of this graph finished: all outputs registered (or, with no
    outputs, journaled as succeeded), and every ancestor finished too, so nothing is kept
    that was computed from inputs that will be recomputed. Indices, in graph order."""
    succeeded = journal.succeeded(graph.indices, len(graph))
    topology = graph.topology
    pred_ptr, pred = topology.predecessors()
    done = bytearray(len(graph))
    for i in topology.topological_order().tolist():
        if not all(done[p] for p in pred[pred_ptr[i] : pred_ptr[i + 1]]):
            continue
        outputs = graph.outputs_at(i)
        if outputs:
            done[i] = all(butler.exists(d) for d in outputs)
        else:
            done[i] = succeeded[i]
    return [i for i, flag in enumerate(done) if flag]
