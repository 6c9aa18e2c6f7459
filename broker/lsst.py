"""A drop-in for LSST's ``lsst.pipe.base.mp_graph_executor.MPGraphExecutor``: same keyword
arguments, ``execute(qgraph)``, ``getReport()`` returning LSST's own ``Report``, LSST's own
exceptions; the quanta run on zmpexec's persistent workers. Imports the LSST stack
(``pip install -e '.[lsst]'``); nothing imports this module unless it is used.
"""

from __future__ import annotations

import itertools
import logging
import tempfile
import uuid
from collections.abc import Collection, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import networkx as nx
import zstandard
from lsst.daf.butler import Butler as LsstButler
from lsst.pipe.base.graph import QgraphSummary, QgraphTaskSummary
from lsst.pipe.base.graph import QuantumGraph as OldQuantumGraph
from lsst.pipe.base.log_on_close import LogOnClose
from lsst.pipe.base.mp_graph_executor import MPGraphExecutorError as LsstExecutorError
from lsst.pipe.base.mp_graph_executor import MPTimeoutError as LsstTimeoutError
from lsst.pipe.base.quantum_graph import (
    PredictedQuantumGraph,
    PredictedQuantumGraphComponents,
    ProvenanceQuantumGraphWriter,
    ProvenanceQuantumScanData,
    ProvenanceQuantumScanModels,
    ProvenanceQuantumScanStatus,
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

__all__ = [
    "GRAPH_FILE",
    "REPORT_FILE",
    "MPGraphExecutor",
    "fixed_up",
    "read_schedule",
    "to_lsst_report",
    "write_provenance",
]

logger = logging.getLogger(__name__)

GRAPH_FILE = "graph.qg"
REPORT_FILE = "report.json"  # our report of an LSST run (``zmpexec report`` reads it)


def read_schedule(
    graph_file: Path, only: Collection[str] | None = None
) -> tuple[QuantumGraph, QgraphSummary]:
    """What the broker needs of a ``.qg`` file, and only that: the thin graph (quantum ids,
    task labels, data ids, edges), as our compact graph (ids are the quantum UUIDs, task paths
    the task classes, so workers preload them), and a summary with the quanta per task.
    ``only``: just these quanta (pipetask's ``--qgraph-node-id``; what they read from others
    must exist already); KeyError for an id the graph does not have."""
    if only is not None:
        only = {str(uuid.UUID(q)) for q in only}
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
        kept: set[str] = set()
        for label, quanta in thin.quanta.items():
            node = pipeline.tasks[label]
            module, _, cls = node.task_class_name.rpartition(".")
            task, required = f"{module}:{cls}", list(node.dimensions.required)
            n = 0
            for q in quanta:
                qid = str(q.quantum_id)
                if only is not None and qid not in only:
                    continue
                data_id = dict(zip(required, q.data_coordinate, strict=False))
                builder.add((qid, label, task, data_id, {}, {}, {}, None, None))
                kept.add(qid)
                n += 1
            if n:
                summary.qgraphTaskSummaries[label] = QgraphTaskSummary(taskLabel=label, numQuanta=n)
        if only is not None and (missing := only - kept):
            raise KeyError(f"the graph has no quantum {sorted(missing)[0]} (--qgraph-node-id)")
        edges = [(str(a), str(b)) for a, b in thin.edges]
        if only is not None:
            edges = [(a, b) for a, b in edges if a in kept and b in kept]
    return QuantumGraph(*builder.build(edges)), summary


def fixed_up(schedule: QuantumGraph, graph: PredictedQuantumGraph, fixup: Any) -> QuantumGraph:
    """``schedule`` with the ordering edges an LSST ``ExecutionGraphFixup`` adds to
    ``graph``'s quanta; LSST's ``MPGraphExecutorError`` if they make a cycle."""
    xgraph = graph.quantum_only_xgraph.copy()
    before = set(xgraph.edges)
    fixup.fixup_graph(xgraph, graph.quanta_by_task)
    if nx.is_directed_acyclic_graph(xgraph) is False:
        raise LsstExecutorError("Updated execution graph has dependency cycle.")
    ids = set(schedule.ids)  # (it may run some of the graph's quanta only)
    added = [(str(a), str(b)) for a, b in xgraph.edges if (a, b) not in before]
    return schedule.with_edges([(a, b) for a, b in added if a in ids and b in ids])


def write_provenance(
    path: str, graph_file: Path, butler: LsstButler, attempted: Collection[str] = ()
) -> int:
    """Write LSST's provenance quantum graph of a finished run to ``path``, from what each
    quantum left in ``butler`` (a full butler on the run's collections), as LSST's own
    scanner reads it: its metadata (status, resource usage, caveats, outputs), its log (with
    a failure's exception and metadata, and earlier attempts'), and which of its outputs are
    stored. A quantum that left no log and no metadata failed without one if it is among
    ``attempted`` (killed: a timeout, its memory, a signal), else it never ran (blocked,
    cancelled). LSST's ``MPGraphExecutor`` writes provenance in-process only (``-j 1``);
    this serves any ``-j`` and either engine. Returns the quanta that ran."""
    graph = PredictedQuantumGraph.read_execution_quanta(str(graph_file))
    quanta = graph.build_execution_quanta()
    labels = graph.quantum_only_xgraph.nodes
    try:
        predicted = graph._quantum_datasets  # (pipe_base keeps no public view of these)
    except AttributeError as e:
        raise RuntimeError(
            "this lsst-pipe-base keeps a graph's predicted quanta elsewhere: zmpexec cannot "
            "write provenance with it"
        ) from e
    ran = 0
    with ExitStack() as stack:
        # Blocks are compressed with a dictionary trained on the first quanta's (as LSST's
        # aggregator does): they are held, uncompressed, until there are enough to train on.
        writer: ProvenanceQuantumGraphWriter | None = None
        held: list[ProvenanceQuantumScanData] = []
        for quantum_id, quantum in quanta.items():
            node = graph.pipeline_graph.tasks[labels[quantum_id]["task_label"]]
            stored = butler.stored_many(itertools.chain.from_iterable(quantum.outputs.values()))
            metadata = _read(butler, stored, node.metadata_output.dataset_type_name)
            log = node.log_output  # (None: the task writes no log)
            logs = None if log is None else _read(butler, stored, log.dataset_type_name)
            if metadata is None and logs is None and str(quantum_id) not in attempted:
                blocked = ProvenanceQuantumScanStatus.BLOCKED
                scan = ProvenanceQuantumScanData(quantum_id, status=blocked)
            else:
                models = ProvenanceQuantumScanModels.from_metadata_and_logs(
                    predicted[quantum_id], metadata, logs
                )
                for ref, exists in stored.items():  # (what metadata and logs do not say)
                    models.output_existence.setdefault(ref.id, exists)
                compressor = None if writer is None else writer.compressor
                scan = models.to_scan_data(predicted[quantum_id], compressor=compressor)
                ran += 1
            if writer is not None:
                writer.write_scan_data(scan)
                continue
            held.append(scan)
            if len(held) >= _DICTIONARY_SAMPLES:
                writer = _provenance_writer(path, graph, predicted, held, stack)
        if writer is None:
            writer = _provenance_writer(path, graph, predicted, held, stack)
        writer.write_overall_inputs()
        writer.write_packages()
        writer.write_init_outputs(assume_existence=True)
    return ran


# A provenance graph's compression dictionary: its size, and the blocks of each kind it is
# trained on (LSST's aggregator's defaults)
_DICTIONARY_BYTES = 32768
_DICTIONARY_SAMPLES = 512


def _provenance_writer(
    path: str,
    graph: PredictedQuantumGraph,
    predicted: Mapping[uuid.UUID, Any],
    held: list[ProvenanceQuantumScanData],
    stack: ExitStack,
) -> ProvenanceQuantumGraphWriter:
    """The writer, its dictionary trained on the first predicted quanta (their datastore
    records left out: provenance has none) and on ``held``, which it writes at once."""
    samples: list[bytes | bytearray | memoryview] = []
    for model in itertools.islice(predicted.values(), _DICTIONARY_SAMPLES):
        bare = model.model_copy(update={"datastore_records": {}})
        samples.append(bare.model_dump_json().encode())
    for scan in held:
        samples += [b for b in (scan.quantum, scan.metadata, scan.logs) if b]
    try:
        cdict = zstandard.train_dictionary(_DICTIONARY_BYTES, samples).as_bytes()
    except zstandard.ZstdError:  # (too few samples, or too alike, to train on)
        cdict = None
    writer = ProvenanceQuantumGraphWriter(
        path,
        exit_stack=stack,
        log_on_close=LogOnClose(logger.log),
        predicted=graph,
        cdict_data=cdict,
    )
    for scan in held:
        writer.write_scan_data(scan)
    held.clear()
    return writer


def _read(butler: LsstButler, stored: Mapping[Any, bool], dataset_type: str) -> Any:
    """The stored output of ``dataset_type`` among ``stored`` (None if it is not)."""
    for ref, exists in stored.items():
        if exists and ref.datasetType.name == dataset_type:
            return butler.get(ref)
    return None


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
    quantum-backed butlers, as ``pipetask run-qbb`` does (register the outputs afterwards),
    with ``qbb_options`` for LSST's executor there (``raise_on_partial_outputs``, ...).
    ``log_levels``: (logger, level) pairs set in every process that runs tasks (pipetask's
    ``--log-level``)."""

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
        self._qbb_options: dict[str, Any] = options.pop("qbb_options", None) or {}
        self._log_levels: list[tuple[str | None, str]] = options.pop("log_levels", None) or []
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
        butler = None if self._qbb_repo else getattr(self._quantum_executor, "_butler", None)
        if provenance_graph_file is not None and butler is None:
            raise NotImplementedError(
                "provenance needs the quantum executor's butler (a SingleQuantumExecutor on a "
                "full butler); with quantum-backed butlers write it after registering the "
                "outputs (zmpexec lsst run --qbb --provenance does)"
            )
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
            schedule = fixed_up(schedule, new, self._fixup)
        try:
            self.execute_file(run_dir / GRAPH_FILE, schedule, new._make_summary(), run_dir)
        except BaseException:
            if provenance_graph_file is not None and butler is not None:
                try:  # (what failed the run is what the caller hears of)
                    write_provenance(
                        provenance_graph_file, run_dir / GRAPH_FILE, butler, self.attempted()
                    )
                except Exception as e:
                    logger.error("no provenance graph written: %s", e)
            raise
        if provenance_graph_file is not None and butler is not None:
            write_provenance(provenance_graph_file, run_dir / GRAPH_FILE, butler, self.attempted())

    def attempted(self) -> set[str]:
        """The quanta an attempt was made of (ran, or started and were lost), by our report."""
        report = self.zmpexec_report
        if report is None:
            return set()
        return {d.id for _, d in report.entries() if d.attempts}

    def execute_file(
        self, graph_file: Path, schedule: QuantumGraph, summary: QgraphSummary, run_dir: Path
    ) -> None:
        """Run the quanta of ``schedule`` (``read_schedule``), read from ``graph_file`` (a
        ``.qg`` file) by the workers."""
        executor = ZmpGraphExecutor(
            self._num_proc,
            self._timeout,
            LsstQuantumExecutor(
                str(graph_file),
                self._quantum_executor,
                qbb_repo=self._qbb_repo,
                qbb_options=self._qbb_options,
                log_levels=self._log_levels,
            ),
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
