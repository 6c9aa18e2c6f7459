"""``MPGraphExecutor``: the public entry point with the shape of LSST's executor. Validates and
fixes up the graph, then runs it in-process (``numProc == 1``) or through a broker and workers.
"""

from __future__ import annotations

import importlib
import logging
import pickle
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

import networkx as nx

from broker.ledger import Ledger
from broker.scheduler import Scheduler
from broker.server import BrokerServer, ProgressCallback, RunTimings
from broker.state import GraphState
from common.butler import Butler
from common.config import ExecutionConfig
from common.errors import ConfigError, GraphError, MPGraphExecutorError
from common.graph import QuantumGraph
from common.protocol import ResultStatus
from common.report import Report
from worker.capture import LogCapture
from worker.executor import QuantumExecutor
from worker.runner import run_quantum

__all__ = ["ExecutionGraphFixup", "MPGraphExecutor"]

logger = logging.getLogger(__name__)

_IPC_PATH_LIMIT = 107  # bytes in sun_path, without the terminating NUL


class ExecutionGraphFixup(Protocol):
    """Adds ordering edges to the execution graph (it must not add or remove quanta)."""

    def fixup_graph(self, xgraph: nx.DiGraph[str]) -> nx.DiGraph[str] | None: ...


def _private_socket_dir() -> tuple[Path, str]:
    path = Path(tempfile.mkdtemp(prefix="zq", dir="/tmp"))  # mkdtemp makes it mode 0700
    endpoint = f"ipc://{path}/broker.sock"
    if len(endpoint.encode()) - len("ipc://") > _IPC_PATH_LIMIT:
        shutil.rmtree(path, ignore_errors=True)
        raise ConfigError(f"ipc path {endpoint} exceeds {_IPC_PATH_LIMIT} bytes")
    return path, endpoint


class MPGraphExecutor:
    """Runs a QuantumGraph with ``numProc`` persistent worker processes.

    ``timeout`` is the per-quantum timeout in seconds (a quantum's own ``timeout_s`` wins).
    ``pdb`` names a debugger module (e.g. ``"pdb"``) for post-mortem; only with ``numProc == 1``,
    which runs in this process. Options: ``heartbeat_interval_s``, ``liveness``, ``retries``,
    ``run_dir``, ``startup_timeout_s``, ``shutdown_grace_s``, ``prefetch``, ``progress`` (a
    callable given a ``Progress`` snapshot every ``progress_interval_s``).
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
        self._on_progress: ProgressCallback | None = options.pop("progress", None)
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
        self._executor = quantumExecutor
        self._pdb = pdb
        self._fixup = executionGraphFixup
        self._report: Report | None = None
        self._server: BrokerServer | None = None
        self.timings: RunTimings | None = None
        self.endpoint: str | None = None  # the broker's endpoint while execute() runs

    @property
    def config(self) -> ExecutionConfig:
        return self._config

    def getReport(self) -> Report:
        if self._report is None:
            raise RuntimeError("no report: execute() has not run")
        return self._report

    def request_stop(self, reason: str = "interrupted") -> None:
        """Stop a running ``execute()`` (e.g. from a signal handler): it cancels what runs."""
        if self._server is not None:
            self._server.request_stop(reason)

    def execute(self, graph: QuantumGraph, butler: Butler) -> None:
        """Run every quantum; raise MPGraphExecutorError (MPTimeoutError) if any did not
        succeed. The report is available from getReport() either way."""
        graph = self._fixed_up(graph)
        graph.validate(butler)
        run_dir = self._config.run_dir or Path(tempfile.mkdtemp(prefix="zmpexec-run-"))
        log_dir = run_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        if self._config.num_workers == 1:
            state, ledger = self._run_in_process(graph, butler, log_dir)
        else:
            state, ledger = self._run_with_broker(graph, butler, log_dir)
        error = ledger.error(state)
        if error is None and self._server is not None and self._server.fatal:
            error = MPGraphExecutorError(self._server.fatal)
        self._report = ledger.report(state, error)
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
        try:
            QuantumGraph(xgraph).check_acyclic()
        except GraphError as e:
            raise MPGraphExecutorError(f"execution graph fixup made a cycle: {e}") from e
        added = [e for e in xgraph.edges if e not in before.edges]
        return graph.with_edges(added)

    # ------------------------------------------------------------------ in-process
    def _run_in_process(
        self, graph: QuantumGraph, butler: Butler, log_dir: Path
    ) -> tuple[GraphState, Ledger]:
        state = GraphState(graph.xgraph)
        scheduler = Scheduler(graph.xgraph, {q.id: q.task_label for q in graph.quanta()})
        ledger = Ledger(graph, in_process=True)
        for root in state.initial_ready():
            scheduler.push(root)
        debugger = importlib.import_module(self._pdb) if self._pdb else None
        # The debugger needs the terminal, so logs are not captured under pdb.
        capture = None if debugger else LogCapture(log_dir)
        try:
            while (qid := scheduler.pop()) is not None:
                q = graph.quantum(qid)
                state.start(qid)
                attempt = ledger.dispatched(qid, "in-process", time.time())
                result = run_quantum(
                    self._executor, butler, q, attempt, capture,
                    in_process=True,
                    on_exception=debugger.post_mortem if debugger else None,
                )  # fmt: skip
                ledger.result(result)
                if result.status is ResultStatus.SUCCESS:
                    scheduler.learn(q.task_label, result.duration_s)
                    for child in state.succeed(qid):
                        scheduler.push(child)
                    continue
                for s in state.fail(qid):
                    scheduler.discard(s)
                logger.warning("quantum %s", ledger.describe(qid))
                if self._config.fail_fast:
                    break
        finally:
            state.cancel()
            if capture is not None:
                capture.close()
        return state, ledger

    # ------------------------------------------------------------------ broker
    def _run_with_broker(
        self, graph: QuantumGraph, butler: Butler, log_dir: Path
    ) -> tuple[GraphState, Ledger]:
        try:
            blob = pickle.dumps((self._executor, butler))
        except Exception as e:
            raise MPGraphExecutorError(f"the quantum executor cannot be pickled: {e}") from e
        sock_dir, endpoint = _private_socket_dir()
        try:
            server = self._server = BrokerServer(
                graph, self._config, blob, log_dir, endpoint, self._on_progress
            )
            self.endpoint = endpoint
            server.run()
            self.timings = server.timings
        finally:
            self.endpoint = None
            shutil.rmtree(sock_dir, ignore_errors=True)
        return server.state, server.ledger
