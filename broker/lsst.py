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
from lsst.pipe.base.graph import QgraphSummary, QgraphTaskSummary
from lsst.pipe.base.graph import QuantumGraph as OldQuantumGraph
from lsst.pipe.base.mp_graph_executor import MPGraphExecutorError as LsstExecutorError
from lsst.pipe.base.mp_graph_executor import MPTimeoutError as LsstTimeoutError
from lsst.pipe.base.quantum_graph import (
    PredictedQuantumGraph,
    PredictedQuantumGraphComponents,
)
from lsst.pipe.base.quantum_reports import ExceptionInfo as LsstExceptionInfo
from lsst.pipe.base.quantum_reports import ExecutionStatus as LsstStatus
from lsst.pipe.base.quantum_reports import QuantumReport as LsstQuantumReport
from lsst.pipe.base.quantum_reports import Report as LsstReport

from broker.graph_executor import MPGraphExecutor as ZmpGraphExecutor
from common.butler import Butler
from common.errors import MPGraphExecutorError, MPTimeoutError
from common.graph import QuantumGraph
from common.graphparts import GraphBuilder
from common.report import Report
from worker.lsst import LsstQuantumExecutor

__all__ = ["GRAPH_FILE", "REPORT_FILE", "MPGraphExecutor", "read_schedule", "to_lsst_report"]

GRAPH_FILE = "graph.qg"
REPORT_FILE = "report.json"  # our report of an LSST run (``zmpexec report`` reads it)


def read_schedule(graph_file: Path) -> tuple[QuantumGraph, QgraphSummary]:
    """What the broker needs of a ``.qg`` file, and only that: the thin graph (quantum ids,
    task labels, data ids, edges), as our compact graph (ids are the quantum UUIDs, task paths
    the task classes, so workers preload them), and a summary with the quanta per task."""
    with PredictedQuantumGraph.open(str(graph_file)) as reader:
        reader.read_thin_graph()
        thin, pipeline, header = reader.components.thin_graph, reader.pipeline_graph, reader.header
        builder = GraphBuilder()
        summary = QgraphSummary(
            cmdLine=header.command or None,
            creationUTC=str(header.timestamp) if header.timestamp is not None else None,
            inputCollection=header.inputs or None,
            outputCollection=header.output,
            outputRun=header.output_run,
        )
        for label, quanta in thin.quanta.items():
            node = pipeline.tasks[label]
            module, _, cls = node.task_class_name.rpartition(".")
            task, required = f"{module}:{cls}", list(node.dimensions.required)
            for q in quanta:
                data_id = dict(zip(required, q.data_coordinate, strict=False))
                builder.add((str(q.quantum_id), label, task, data_id, {}, {}, {}, None, None))
            summary.qgraphTaskSummaries[label] = QgraphTaskSummary(
                taskLabel=label, numQuanta=len(quanta)
            )
        edges = [(str(a), str(b)) for a, b in thin.edges]
    return QuantumGraph(*builder.build(edges)), summary


def to_lsst_report(report: Report, summary: QgraphSummary) -> LsstReport:
    lsst = LsstReport(qgraphSummary=summary)
    for r, _ in report.entries():
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
        new = (
            graph
            if isinstance(graph, PredictedQuantumGraph)
            else PredictedQuantumGraph.from_old_quantum_graph(graph)
        )
        old = graph if isinstance(graph, OldQuantumGraph) else graph.to_old_quantum_graph()
        run_dir = self._run_dir or Path(tempfile.mkdtemp(prefix="zmpexec-"))
        run_dir.mkdir(parents=True, exist_ok=True)
        # The workers read their quanta from this file, a quantum at a time.
        PredictedQuantumGraphComponents.from_old_quantum_graph(old).write(str(run_dir / GRAPH_FILE))
        schedule, _ = read_schedule(run_dir / GRAPH_FILE)
        if self._fixup is not None:
            xgraph = new.quantum_only_xgraph.copy()
            before = set(xgraph.edges)
            self._fixup.fixup_graph(xgraph, new.quanta_by_task)
            if nx.is_directed_acyclic_graph(xgraph) is False:
                raise LsstExecutorError("Updated execution graph has dependency cycle.")
            schedule = schedule.with_edges(
                [(str(a), str(b)) for a, b in xgraph.edges if (a, b) not in before]
            )
        self.execute_file(run_dir / GRAPH_FILE, schedule, new._make_summary(), run_dir)

    def execute_file(
        self, graph_file: Path, schedule: QuantumGraph, summary: QgraphSummary, run_dir: Path
    ) -> None:
        """Run the quanta of ``schedule`` (``read_schedule``), read from ``graph_file`` (a
        ``.qg`` file) by the workers."""
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
            executor.execute(schedule, scratch)
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
                self._report = to_lsst_report(self.zmpexec_report, summary)
