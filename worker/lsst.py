"""Running LSST quanta: a quantum executor wrapping LSST's ``SingleQuantumExecutor``.

Each executor child reads the quantum graph file once, on its first quantum, then executes
the quanta it is sent by id, so per-quantum cost is the task itself. Imports the LSST stack
(``pip install -e '.[lsst]'``); nothing imports this module unless it is used.
"""

from __future__ import annotations

import uuid
from typing import Any

import networkx as nx
from lsst.daf.butler import QuantumBackedButler
from lsst.pipe.base import InvalidQuantumError, RepeatableQuantumError, TaskFactory
from lsst.pipe.base.quantum_graph import PredictedQuantumGraph
from lsst.pipe.base.single_quantum_executor import SingleQuantumExecutor

from common.butler import Butler
from common.quantum import Quantum
from worker.executor import QuantumFailure

__all__ = ["LsstQuantumExecutor", "qbb_executor", "read_execution_graph"]


def read_execution_graph(path: str) -> tuple[PredictedQuantumGraph, nx.DiGraph[uuid.UUID]]:
    """The graph in a ``.qg`` / ``.qgraph`` file, with its executable quanta built."""
    graph = PredictedQuantumGraph.read_execution_quanta(path)
    graph.build_execution_quanta()
    return graph, graph.quantum_only_xgraph


def qbb_executor(repo: str, graph: PredictedQuantumGraph) -> SingleQuantumExecutor:
    """LSST's SingleQuantumExecutor on quantum-backed butlers, as ``pipetask run-qbb`` makes
    it: quanta read inputs through the graph's datastore records and write outputs to the
    datastore only, so workers never contend for the registry (outputs are registered
    afterwards with ``transfer_from_graph``)."""
    universe = graph.pipeline_graph.universe
    dataset_types = {n.name: n.dataset_type for n in graph.pipeline_graph.dataset_types.values()}

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
    )


class LsstQuantumExecutor:
    """Executes the quantum whose id (an LSST quantum UUID) it is given, from ``graph_path``,
    with ``lsst_executor`` (a picklable LSST ``QuantumExecutor``, usually a
    ``SingleQuantumExecutor`` holding the LSST butler). Our ``butler`` argument is unused.

    LSST's exit semantics are kept: ``RepeatableQuantumError`` fails with exit code 20,
    ``InvalidQuantumError`` with 21 and stops the whole run; ``NoWorkFound`` is a success.
    """

    def __init__(
        self, graph_path: str, lsst_executor: Any = None, *, qbb_repo: str | None = None
    ) -> None:
        if (lsst_executor is None) == (qbb_repo is None):
            raise ValueError("give either an LSST quantum executor or a repository for QBB")
        self.graph_path = graph_path
        self.lsst_executor = lsst_executor
        self.qbb_repo = qbb_repo
        self._xgraph: nx.DiGraph[uuid.UUID] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {
            "graph_path": self.graph_path,
            "lsst_executor": self.lsst_executor,
            "qbb_repo": self.qbb_repo,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["graph_path"], state["lsst_executor"], qbb_repo=state["qbb_repo"]
        )

    def execute(self, quantum: Quantum, butler: Butler) -> None:
        if self._xgraph is None:  # first quantum in this process: read the graph once
            graph, self._xgraph = read_execution_graph(self.graph_path)
            if self.qbb_repo is not None:
                self.lsst_executor = qbb_executor(self.qbb_repo, graph)
        quantum_id = uuid.UUID(quantum.id)
        node = self._xgraph.nodes[quantum_id]
        try:
            self.lsst_executor.execute(
                node["pipeline_node"], node["quantum"], quantum_id=quantum_id
            )
        except RepeatableQuantumError as e:
            raise QuantumFailure(str(e), class_name=_name(e), exit_code=e.EXIT_CODE) from e
        except InvalidQuantumError as e:
            raise QuantumFailure(
                str(e), class_name=_name(e), exit_code=e.EXIT_CODE, stop_run=True
            ) from e


def _name(e: BaseException) -> str:
    return f"{type(e).__module__}.{type(e).__qualname__}"
