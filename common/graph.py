"""The quantum graph: the model the broker and the API work with, built from checked
``GraphParts`` (``common.graphparts``; files are read and written by ``common.graphfile``).

A million quanta cost a few hundred bytes each, not the kilobytes of a Quantum object per
node of a networkx graph; ``xgraph`` builds a networkx view on demand (fixups, analysis).
Must not run tasks.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx as nx
import numpy as np

from common import graphfile
from common.errors import GraphError, TaskResolutionError
from common.graphparts import (
    Datasets,
    GraphBuilder,
    Payloads,
    index_of,
    linked,
    names,
    unpack_payload,
)
from common.quantum import DataIdValue, Quantum, resolve_task
from common.resources import Amounts, parse_label_resources
from common.topology import Topology, as_numpy

if TYPE_CHECKING:
    from common.butler import Butler

__all__ = ["QuantumGraph"]


class QuantumGraph:
    """A DAG of quanta. Quanta are addressed by id (``quantum(qid)``) or by index
    (``quantum_at(i)``, ``index(qid)``); the broker works with indices."""

    def __init__(
        self,
        ids: list[str],
        kinds: list[tuple[str, str]],
        kind: array[int],
        topology: Topology,
        datasets: Datasets,
        payloads: Payloads,
        timeouts: dict[int, float],
        index: dict[str, int] | None = None,
        resources: dict[int, Amounts] | None = None,
        label_resources: dict[str, Amounts] | None = None,
    ) -> None:
        """Parts already checked (``from_quanta``, ``load``); GraphError on duplicate ids.
        ``index`` (id -> index) when the caller has it already."""
        self.ids = ids
        self.kinds = kinds  # (task_label, task) pairs
        self.kind = kind  # "I", index into kinds per quantum
        self.topology = topology
        self.datasets = datasets
        self.payloads = payloads
        self.timeouts = timeouts  # only quanta with their own timeout
        self.resources = resources if resources is not None else {}  # only quanta's own
        self.label_resources = label_resources if label_resources is not None else {}
        self._index = index if index is not None else index_of(ids)
        self.labels = sorted({label for label, _ in kinds})
        label_of = {label: n for n, label in enumerate(self.labels)}
        self.kind_label = [label_of[label] for label, _ in kinds]  # label index per kind

    # ------------------------------------------------------------------ building
    @classmethod
    def from_quanta(
        cls,
        quanta: Iterable[Quantum],
        edges: Iterable[tuple[str, str]] = (),
        *,
        resources: Mapping[str, Mapping[str, object]] | None = None,
    ) -> QuantumGraph:
        """Link producers to consumers by dataset name, add ordering ``edges``.
        ``resources``: defaults by task label (``{"isr": {"memory": "2GB"}}``); a quantum's
        own ``resources`` win. ValueError naming a bad value."""
        builder = GraphBuilder()
        for q in quanta:
            data_id, inputs, outputs = dict(q.data_id), dict(q.inputs), dict(q.outputs)
            config, own = dict(q.config), dict(q.resources) or None
            builder.add(
                (q.id, q.task_label, q.task, data_id, inputs, outputs, config, q.timeout_s, own)
            )
        return cls(*builder.build(edges, parse_label_resources(resources)))

    @classmethod
    def load(cls, path: str | Path, *, yaml_loader: type[Any] | None = None) -> QuantumGraph:
        """Read a graph file: ``.zmpg`` (our compact binary form, fastest), ``.json``, or
        ``.yaml``/``.yml`` (libyaml's C loader when PyYAML has it; ``yaml_loader`` chooses)."""
        return cls(*graphfile.read_graph(Path(path), yaml_loader))

    def save(self, path: str | Path) -> None:
        """Write in the form the suffix names (``.zmpg``, ``.json``, ``.yaml``/``.yml``)."""
        graphfile.write_graph(self, Path(path))

    @classmethod
    def from_data(cls, raw: object, source: str = "graph") -> QuantumGraph:
        """From the plain data of a JSON or YAML file: ``{"quanta": [...], "edges": [...]}``."""
        return cls(*graphfile.graph_from_data(raw, source))

    def to_data(self) -> dict[str, Any]:
        """Plain data for JSON or YAML; only ordering edges not implied by datasets listed."""
        implied = set(QuantumGraph.from_quanta(self).xgraph.edges)
        extra = [[a, b] for a, b in self.xgraph.edges if (a, b) not in implied]
        data: dict[str, Any] = {"quanta": [q.to_dict() for q in self]}
        if extra:
            data["edges"] = extra
        if self.label_resources:
            data["resources"] = {k: dict(v) for k, v in self.label_resources.items()}
        return data

    def request(self, i: int) -> Amounts:
        """What quantum ``i`` declares it needs: its label's defaults, its own values over
        them (canonical; empty if neither declares anything)."""
        label = self.kinds[self.kind[i]][0]
        own = self.resources.get(i)
        base = self.label_resources.get(label)
        if own is None:
            return dict(base) if base else {}
        return {**base, **own} if base else dict(own)

    def with_edges(self, edges: Sequence[tuple[str, str]]) -> QuantumGraph:
        """This graph plus ordering ``edges``; GraphError if they make a cycle."""
        src, dst = self.topology.edges()
        extra = np.array([[self._index[a], self._index[b]] for a, b in edges], dtype=np.int64)
        extra = extra.reshape(-1, 2)
        topology = linked(
            self.ids, np.concatenate([src, extra[:, 0]]), np.concatenate([dst, extra[:, 1]])
        )
        return QuantumGraph(
            self.ids,
            self.kinds,
            self.kind,
            topology,
            self.datasets,
            self.payloads,
            self.timeouts,
            self._index,
            self.resources,
            self.label_resources,
        )

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, qid: object) -> bool:
        return qid in self._index

    def __iter__(self) -> Iterator[Quantum]:
        """Each quantum, built as it is reached."""
        return (self.quantum_at(i) for i in range(len(self.ids)))

    def index(self, qid: str) -> int:
        """The index of quantum ``qid`` (KeyError if it is not in the graph)."""
        return self._index[qid]

    @property
    def indices(self) -> Mapping[str, int]:
        """Quantum id -> index, read-only by convention."""
        return self._index

    def payload_at(
        self, i: int
    ) -> tuple[dict[str, DataIdValue], dict[str, str], dict[str, str], dict[str, Any]]:
        """Quantum ``i``'s (data_id, inputs, outputs, config), unpacked."""
        return unpack_payload(self.payloads.raw(i))

    def outputs_at(self, i: int) -> list[str]:
        """The names of the datasets quantum ``i`` writes."""
        return list(self.payload_at(i)[2].values())

    def label_at(self, i: int) -> str:
        return self.kinds[self.kind[i]][0]

    def quantum(self, qid: str) -> Quantum:
        return self.quantum_at(self._index[qid])

    def quantum_at(self, i: int) -> Quantum:
        label, task = self.kinds[self.kind[i]]
        data_id, inputs, outputs, config = self.payload_at(i)
        timeout, own = self.timeouts.get(i), self.resources.get(i)
        return Quantum.trusted(
            self.ids[i], label, task, data_id, inputs, outputs, config, timeout, own
        )

    def quanta(self) -> list[Quantum]:
        """Every quantum as an object: for small graphs (iterate a big one instead)."""
        return list(self)

    @property
    def edge_count(self) -> int:
        return self.topology.edge_count

    def task_modules(self) -> set[str]:
        """The modules the graph's tasks live in (workers import them before they start)."""
        return {task.partition(":")[0] for _, task in self.kinds}

    def task_counts(self) -> dict[str, int]:
        counts = np.bincount(as_numpy(self.kind), minlength=len(self.kinds)).tolist()
        out: dict[str, int] = {}
        for (label, _), n in zip(self.kinds, counts, strict=True):
            out[label] = out.get(label, 0) + n
        return {label: n for label, n in out.items() if n}

    @property
    def xgraph(self) -> nx.DiGraph[str]:
        """A networkx view (node ids are quantum ids), built on each call: for fixups and
        analysis, never kept by the broker."""
        g: nx.DiGraph[str] = nx.DiGraph()
        g.add_nodes_from(self.ids)
        ids = self.ids
        src, dst = self.topology.edges()
        g.add_edges_from((ids[a], ids[b]) for a, b in zip(src.tolist(), dst.tolist(), strict=True))
        return g

    # ------------------------------------------------------------------ validation
    def validate(self, butler: Butler | None = None, *, check_tasks: bool = True) -> None:
        """Raise GraphError naming the offending quanta if this graph must not run. (Cycles,
        duplicate ids and datasets with two producers cannot be built at all.)"""
        missing = {
            ds: name
            for ds, name in self.datasets.externals.items()
            if butler is None or not butler.exists(name)
        }
        if missing:
            ins = as_numpy(self.datasets.ins)
            readers = np.repeat(
                np.arange(len(self), dtype=np.int64), np.diff(as_numpy(self.datasets.in_ptr))
            )
            first = next(iter(missing))
            needing = [self.ids[i] for i in np.unique(readers[ins == first]).tolist()]
            every = [self.ids[i] for i in np.unique(readers[np.isin(ins, list(missing))])]
            where = "in the repository" if butler is not None else "(no repository given)"
            raise GraphError(
                f"{len(missing)} input dataset(s) are produced by no quantum and not found "
                f"{where}: {missing[first]!r} (needed by {names(needing)})"
                + (f", and {len(missing) - 1} more" if len(missing) > 1 else ""),
                every,
            )
        if check_tasks:
            self._check_tasks()

    def _check_tasks(self) -> None:
        by_kind = as_numpy(self.kind)
        for n, (_, task) in enumerate(self.kinds):
            try:
                resolve_task(task)
            except TaskResolutionError as e:
                ids = [self.ids[i] for i in np.flatnonzero(by_kind == n).tolist()]
                raise GraphError(f"{e} (used by {names(ids)})", ids) from e
