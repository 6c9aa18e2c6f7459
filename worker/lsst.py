"""Running LSST quanta: a quantum executor wrapping LSST's ``SingleQuantumExecutor``.

Each executor child opens the ``.qg`` graph file once and keeps it open: init quanta and
dimension records are read on its first quantum, then each quantum's own datasets are read
by id when it runs and dropped after, so a child's memory does not grow with the graph and
reading costs about a millisecond per quantum. Imports the LSST stack (``pip install -e
'.[lsst]'``); nothing imports this module unless it is used.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

from lsst.daf.butler import Quantum as LsstQuantum
from lsst.daf.butler import QuantumBackedButler
from lsst.daf.butler.cli.cliLog import CliLog
from lsst.pipe.base import (
    ExecutionResources,
    InvalidQuantumError,
    QuantumSuccessCaveats,
    RepeatableQuantumError,
    TaskFactory,
)
from lsst.pipe.base.pipeline_graph import PipelineGraph, TaskNode
from lsst.pipe.base.quantum_graph import PredictedQuantumGraph, PredictedQuantumGraphReader
from lsst.pipe.base.single_quantum_executor import SingleQuantumExecutor

from common.butler import Butler
from common.quantum import Quantum
from common.report import Caveat
from worker.executor import Allotment, QuantumFailure, allotted

__all__ = [
    "KEPT_PREVIOUS_QUANTA",
    "GraphFile",
    "LsstQuantumExecutor",
    "caveat_of",
    "execution_resources",
    "qbb_executor",
]

logger = logging.getLogger(__name__)

# Each quantum's log lists (LSST: ``previous_process_quanta``) the last this many quanta its
# executor process ran before it, not all of them
KEPT_PREVIOUS_QUANTA = 5

_MIB = 1024 * 1024


class GraphFile:
    """A ``.qg`` file held open: ``quantum(id)`` reads and builds one executable quantum."""

    def __init__(self, path: str) -> None:
        if not path.endswith(".qg"):
            raise ValueError(f"{path}: executor children read the .qg format only")
        self._stack = ExitStack()
        self._reader: PredictedQuantumGraphReader = self._stack.enter_context(
            PredictedQuantumGraph.open(path)
        )
        self._reader.read_init_quanta()
        self._reader.read_dimension_data()
        self.pipeline_graph: PipelineGraph = self._reader.pipeline_graph

    def quantum(self, quantum_id: uuid.UUID) -> tuple[TaskNode, LsstQuantum]:
        components = self._reader.components
        self._reader.read_quantum_datasets([quantum_id])
        try:
            label = components.quantum_datasets[quantum_id].task_label
            built = components.assemble().build_execution_quanta([quantum_id])[quantum_id]
        finally:
            components.quantum_datasets.pop(quantum_id, None)  # read again if run again
        return self.pipeline_graph.tasks[label], built

    @property
    def held(self) -> int:
        """Quanta whose datasets are in memory (0 between quanta)."""
        return len(self._reader.components.quantum_datasets)

    def close(self) -> None:
        self._stack.close()


def qbb_executor(repo: str, pipeline_graph: PipelineGraph, **options: Any) -> SingleQuantumExecutor:
    """LSST's SingleQuantumExecutor on quantum-backed butlers, as ``pipetask run-qbb`` makes
    it: quanta read inputs through the graph's datastore records and write outputs to the
    datastore only, so workers never contend for the registry (outputs are registered
    afterwards with ``transfer_from_graph``). ``options`` go to it as pipetask's do
    (``raise_on_partial_outputs``, ``assume_no_existing_outputs``, ``enable_lsst_debug``)."""
    universe = pipeline_graph.universe
    dataset_types = {n.name: n.dataset_type for n in pipeline_graph.dataset_types.values()}

    def factory(quantum: Any) -> QuantumBackedButler:
        return QuantumBackedButler.initialize(
            config=repo, quantum=quantum, dimensions=universe, dataset_types=dataset_types
        )

    return SingleQuantumExecutor(
        butler=None,
        task_factory=TaskFactory(),
        limited_butler_factory=factory,
        skip_existing=True,
        clobber_outputs=True,
        **options,
    )


class LsstQuantumExecutor:
    """Executes the quantum whose id (an LSST quantum UUID) it is given, from ``graph_path``
    (a ``.qg`` file),
    with ``lsst_executor`` (a picklable LSST ``QuantumExecutor``, usually a
    ``SingleQuantumExecutor`` holding the LSST butler). Our ``butler`` argument is unused.

    LSST's exit semantics are kept: ``RepeatableQuantumError`` fails with exit code 20,
    ``InvalidQuantumError`` with 21 and stops the whole run; ``NoWorkFound`` is a success.

    What an attempt was given (``allotted()``: its memory request, as declared, from
    ``--memory-per-quantum`` or raised by a memory retry, and its declared cores) reaches the
    task as LSST's ``ExecutionResources`` (``max_mem``, ``num_cores``), over what the LSST
    executor was made with; what the attempt does not set keeps the executor's own.
    """

    def __init__(
        self,
        graph_path: str,
        lsst_executor: Any = None,
        *,
        qbb_repo: str | None = None,
        qbb_options: dict[str, Any] | None = None,
        log_levels: Sequence[tuple[str | None, str]] = (),
    ) -> None:
        if (lsst_executor is None) == (qbb_repo is None):
            raise ValueError("give either an LSST quantum executor or a repository for QBB")
        self.graph_path = graph_path
        self.lsst_executor = lsst_executor
        self.qbb_repo = qbb_repo
        self.qbb_options = qbb_options or {}
        self.log_levels = list(log_levels)  # (logger or None for the root, level)
        self._file: GraphFile | None = None
        self._own_resources: ExecutionResources | None = None  # the LSST executor's own
        self._resources_read = False  # (whether ``_own_resources`` was read from it)
        self._clobbers: bool | None = None  # the LSST executor's own clobber_outputs
        self._warned = False

    def __getstate__(self) -> dict[str, Any]:
        return {
            "graph_path": self.graph_path,
            "lsst_executor": self.lsst_executor,
            "qbb_repo": self.qbb_repo,
            "qbb_options": self.qbb_options,
            "log_levels": self.log_levels,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["graph_path"],
            state["lsst_executor"],
            qbb_repo=state["qbb_repo"],
            qbb_options=state.get("qbb_options"),
            log_levels=state.get("log_levels", ()),
        )

    def execute(self, quantum: Quantum, butler: Butler) -> Caveat | None:
        if self._file is None:  # first quantum in this process: open the graph file
            if self.log_levels:  # (pipetask's --log-level, in every process running tasks)
                CliLog.setLogLevels(self.log_levels)
            self._file = GraphFile(self.graph_path)
            if self.qbb_repo is not None:
                self.lsst_executor = qbb_executor(
                    self.qbb_repo, self._file.pipeline_graph, **self.qbb_options
                )
        quantum_id = uuid.UUID(quantum.id)
        task_node, built = self._file.quantum(quantum_id)
        self._give(allotted())
        try:
            return caveat_of(self.lsst_executor.execute(task_node, built, quantum_id=quantum_id))
        except RepeatableQuantumError as e:
            raise QuantumFailure(str(e), class_name=_name(e), exit_code=e.EXIT_CODE) from e
        except InvalidQuantumError as e:
            raise QuantumFailure(
                str(e), class_name=_name(e), exit_code=e.EXIT_CODE, stop_run=True
            ) from e
        finally:
            self._take_back()
            _forget_older_quanta(self.lsst_executor)

    def _give(self, allotment: Allotment) -> None:
        """Make ``allotment`` the next quantum's ``ExecutionResources``, and have a retry
        clear what its failed attempt left (its log, partial outputs: LSST refuses to run a
        quantum over them unless clobbering; they are this run's own); ``_take_back`` after
        it. LSST's ``SingleQuantumExecutor`` hands the task what it holds as ``_resources``
        and reads ``_clobber_outputs``; an executor without them is warned about once and
        run as it is (the tests that read a task's ``max_mem`` or retry fail where LSST's
        keeps them elsewhere)."""
        executor = self.lsst_executor
        if self._clobbers is None:
            self._clobbers = getattr(executor, "_clobber_outputs", None)
        if self._clobbers is False and allotment.attempt > 1:
            executor._clobber_outputs = True  # (a user's True stays as it is)
        elif self._clobbers is None and allotment.attempt > 1:
            self._cannot("clear a failed attempt's outputs", "_clobber_outputs")
        if allotment.memory_mb is None and allotment.cpus is None:
            return  # (the executor's own stand)
        if not self._resources_read:
            if not hasattr(executor, "_resources"):
                self._cannot("hand a task its ExecutionResources", "_resources")
                return
            self._own_resources, self._resources_read = executor._resources, True
        base = self._own_resources or ExecutionResources()
        executor._resources = execution_resources(allotment, base)

    def _take_back(self) -> None:
        """The LSST executor as it was made, for the next quantum (and for its owner: the
        in-process engine runs the user's own)."""
        executor = self.lsst_executor
        if self._clobbers is False:
            executor._clobber_outputs = False
        if self._resources_read:
            executor._resources = self._own_resources

    def _cannot(self, what: str, attribute: str) -> None:
        if not self._warned:
            self._warned = True
            logger.warning(
                "cannot %s with %s: it has no %s (SingleQuantumExecutor's); running it as it is",
                what,
                type(self.lsst_executor).__name__,
                attribute,
            )


def execution_resources(allotment: Allotment, base: ExecutionResources) -> ExecutionResources:
    """``base`` with what ``allotment`` sets: ``max_mem`` from its memory (MiB), ``num_cores``
    from its cores."""
    return ExecutionResources(
        num_cores=base.num_cores if allotment.cpus is None else allotment.cpus,
        max_mem=base.max_mem if allotment.memory_mb is None else int(allotment.memory_mb * _MIB),
    )


_NO_WORK = (
    QuantumSuccessCaveats.NO_WORK
    | QuantumSuccessCaveats.ADJUST_QUANTUM_RAISED
    | QuantumSuccessCaveats.UPSTREAM_FAILURE_NO_WORK
)
_PARTIAL = QuantumSuccessCaveats.ANY_OUTPUTS_MISSING | QuantumSuccessCaveats.PARTIAL_OUTPUTS_ERROR


def caveat_of(result: Any) -> Caveat | None:
    """The note on an LSST executor's successful ``QuantumExecutionResult`` (None for
    anything else): skipped as existing, no work found (``NoWorkFound`` in ``adjustQuantum``
    or ``runQuantum``: the quantum metadata's ``caveats``), or partial outputs."""
    if getattr(result, "skipped_existing", False):
        return Caveat.SKIPPED_EXISTING
    if getattr(result, "adjusted_no_work", False):
        return Caveat.NO_WORK
    try:
        flags = QuantumSuccessCaveats(int(result.task_metadata["quantum"]["caveats"]))
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    if flags & _NO_WORK:
        return Caveat.NO_WORK
    if flags & _PARTIAL:
        return Caveat.PARTIAL_OUTPUTS
    return None


def _forget_older_quanta(executor: Any) -> None:
    """Keep the last ``KEPT_PREVIOUS_QUANTA`` of the quanta ``executor`` ran. LSST's
    ``SingleQuantumExecutor`` lists all it ran (``_previous_process_quanta``) in each next
    quantum's log (and so in provenance built from logs): under a warm executor that grows
    with every quantum, quadratic in all. (The tests fail where LSST no longer keeps that
    list, or keeps it elsewhere.)"""
    previous = getattr(executor, "_previous_process_quanta", None)
    if isinstance(previous, list) and len(previous) > KEPT_PREVIOUS_QUANTA:
        del previous[:-KEPT_PREVIOUS_QUANTA]


def _name(e: BaseException) -> str:
    return f"{type(e).__module__}.{type(e).__qualname__}"
