"""A drop-in for LSST's ``lsst.pipe.base.mp_graph_executor.MPGraphExecutor``: same keyword
arguments, ``execute(qgraph)``, ``getReport()`` returning LSST's own ``Report``, LSST's own
exceptions; the quanta run on zmpexec's persistent workers. Imports the LSST stack
(``pip install -e '.[lsst]'``); nothing imports this module unless it is used.
"""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path
from typing import Any

import networkx as nx
from lsst.pipe.base.graph import QuantumGraph as OldQuantumGraph
from lsst.pipe.base.mp_graph_executor import MPGraphExecutorError as LsstExecutorError
from lsst.pipe.base.mp_graph_executor import MPTimeoutError as LsstTimeoutError
from lsst.pipe.base.quantum_graph import PredictedQuantumGraph
from lsst.pipe.base.quantum_reports import ExceptionInfo as LsstExceptionInfo
from lsst.pipe.base.quantum_reports import ExecutionStatus as LsstStatus
from lsst.pipe.base.quantum_reports import QuantumReport as LsstQuantumReport
from lsst.pipe.base.quantum_reports import Report as LsstReport

from broker.graph_executor import MPGraphExecutor as ZmpGraphExecutor
from common.butler import Butler
from common.errors import MPGraphExecutorError, MPTimeoutError
from common.graph import QuantumGraph
from common.quantum import Quantum
from common.report import Report
from worker.lsst import LsstQuantumExecutor

__all__ = ["MPGraphExecutor", "to_lsst_report", "to_zmpexec_graph"]

GRAPH_FILE = "graph.qgraph"


def to_zmpexec_graph(xgraph: nx.DiGraph[uuid.UUID]) -> QuantumGraph:
    """Our graph of an LSST execution graph: ids are the quantum UUIDs, task paths the task
    classes (so workers preload them), edges the LSST ones (no datasets: LSST's butler holds
    them)."""
    quanta = []
    for qid, node in xgraph.nodes(data=True):
        module, _, cls = node["pipeline_node"].task_class_name.rpartition(".")
        quanta.append(
            Quantum(
                id=str(qid),
                task_label=node["task_label"],
                task=f"{module}:{cls}",
                data_id={k: v for k, v in dict(node["data_id"].required).items()},
            )
        )
    return QuantumGraph.from_quanta(quanta, [(str(a), str(b)) for a, b in xgraph.edges])


def to_lsst_report(report: Report, graph: PredictedQuantumGraph) -> LsstReport:
    lsst = LsstReport(qgraphSummary=graph._make_summary())
    for r in report.quantaReports:
        exc = r.exceptionInfo
        lsst.quantaReports.append(
            LsstQuantumReport(
                dataId=dict(r.dataId),
                taskLabel=r.taskLabel,
                status=LsstStatus(r.status.value),
                exitCode=r.exitCode,
                quantumId=uuid.UUID(r.quantumId),
                exceptionInfo=LsstExceptionInfo(className=exc.className, message=exc.message)
                if exc
                else None,
            )
        )
    lsst.status = LsstStatus(report.status.value)
    lsst.exitCode = report.exitCode
    if report.exceptionInfo is not None:
        lsst.exceptionInfo = LsstExceptionInfo(
            className=report.exceptionInfo.className, message=report.exceptionInfo.message
        )
    return lsst


class MPGraphExecutor:
    """LSST's executor interface on zmpexec. ``options`` go to zmpexec's ``MPGraphExecutor``
    (``run_dir``, ``retries``, ``heartbeat_interval_s``, ...); ``run_dir`` also holds the graph
    file the workers read. ``qbb_repo=REPO`` instead of a ``quantum_executor`` runs quanta on
    quantum-backed butlers, as ``pipetask run-qbb`` does (register the outputs afterwards)."""

    def __init__(
        self,
        *,
        num_proc: int,
        timeout: float,
        quantum_executor: Any = None,
        start_method: str | None = None,
        fail_fast: bool = False,
        pdb: str | None = None,
        execution_graph_fixup: Any = None,
        **options: Any,
    ) -> None:
        self._num_proc, self._timeout, self._start_method = num_proc, timeout, start_method
        self._fail_fast, self._pdb = fail_fast, pdb
        self._qbb_repo: str | None = options.pop("qbb_repo", None)  # quantum-backed butlers
        run_dir = options.pop("run_dir", None)
        self._run_dir = Path(run_dir) if run_dir is not None else None
        self._quantum_executor = quantum_executor
        self._fixup = execution_graph_fixup
        self._options = options
        self._report: LsstReport | None = None
        self._inner: ZmpGraphExecutor | None = None
        self._stop: str | None = None
        self.zmpexec_report: Report | None = None

    def request_stop(self, reason: str = "interrupted", *, graceful: bool = True) -> None:
        """Stop a running ``execute()`` (zmpexec's semantics: running quanta get the grace)."""
        self._stop = reason
        if self._inner is not None:
            self._inner.request_stop(reason, graceful=graceful)

    def getReport(self) -> LsstReport:
        if self._report is None:
            raise RuntimeError("no report: execute() has not run")
        return self._report

    def execute(
        self,
        graph: OldQuantumGraph | PredictedQuantumGraph,
        *,
        provenance_graph_file: str | None = None,
    ) -> None:
        if provenance_graph_file is not None:
            raise NotImplementedError("provenance graphs are not written by zmpexec")
        old = graph if isinstance(graph, OldQuantumGraph) else graph.to_old_quantum_graph()
        new = (
            graph
            if isinstance(graph, PredictedQuantumGraph)
            else (PredictedQuantumGraph.from_old_quantum_graph(graph))
        )
        new.build_execution_quanta()
        xgraph = new.quantum_only_xgraph.copy()
        if self._fixup is not None:
            self._fixup.fixup_graph(xgraph, new.quanta_by_task)
            if nx.is_directed_acyclic_graph(xgraph) is False:
                raise LsstExecutorError("Updated execution graph has dependency cycle.")
        run_dir = self._run_dir or Path(tempfile.mkdtemp(prefix="zmpexec-"))
        run_dir.mkdir(parents=True, exist_ok=True)
        old.saveUri(str(run_dir / GRAPH_FILE))
        self.execute_file(run_dir / GRAPH_FILE, xgraph, new, run_dir)

    def execute_file(
        self,
        graph_file: Path,
        xgraph: nx.DiGraph[uuid.UUID],
        graph: PredictedQuantumGraph,
        run_dir: Path,
    ) -> None:
        """Run the quanta of ``xgraph`` (read from ``graph_file`` by the workers)."""
        executor = ZmpGraphExecutor(
            self._num_proc,
            self._timeout,
            LsstQuantumExecutor(str(graph_file), self._quantum_executor, qbb_repo=self._qbb_repo),
            startMethod=self._start_method,
            failFast=self._fail_fast,
            pdb=self._pdb,
            run_dir=run_dir,
            **self._options,
        )
        self._inner = executor
        if self._stop is not None:
            executor.request_stop(self._stop)
        scratch = Butler(run_dir / "scratch")  # LSST's butler holds the data; ours stays empty
        try:
            executor.execute(to_zmpexec_graph(xgraph), scratch)
        except MPTimeoutError as e:
            raise LsstTimeoutError(str(e)) from e
        except MPGraphExecutorError as e:
            raise LsstExecutorError(str(e)) from e
        finally:
            try:
                self.zmpexec_report = executor.getReport()
            except RuntimeError:
                pass  # it failed before running anything
            else:
                self._report = to_lsst_report(self.zmpexec_report, graph)
