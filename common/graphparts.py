"""The parts a quantum graph is made of, and the builder that checks and links them: quanta are
indices 0..n-1 with flat arrays for their task kind, edges (``Topology``) and datasets, and each
quantum's payload (data id, inputs, outputs, config) packed as bytes until someone asks for the
Quantum. ``common.graph`` wraps the parts in the model; ``common.graphfile`` reads and writes
them. Must not run tasks.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgpack
import numpy as np

from common.errors import GraphError
from common.quantum import DataIdValue, Fields, checked_fields
from common.resources import Amounts
from common.topology import CycleError, Topology

__all__ = [
    "Datasets",
    "GraphBuilder",
    "GraphParts",
    "Payloads",
    "cycle_error",
    "index_of",
    "linked",
    "names",
    "pack_payload",
    "unpack_payload",
]

_MAX_NAMED = 10  # quanta named in one error message


def names(ids: Iterable[str]) -> str:
    """Quantum ids for an error message: the first few, then how many more."""
    ids = list(ids)
    shown = ", ".join(repr(i) for i in ids[:_MAX_NAMED])
    return shown + (f" and {len(ids) - _MAX_NAMED} more" if len(ids) > _MAX_NAMED else "")


def pack_payload(
    data_id: dict[str, DataIdValue],
    inputs: dict[str, str],
    outputs: dict[str, str],
    config: dict[str, Any],
) -> bytes:
    packed: bytes = msgpack.packb((data_id, inputs, outputs, config), use_bin_type=True)
    return packed


def unpack_payload(
    raw: bytes,
) -> tuple[dict[str, DataIdValue], dict[str, str], dict[str, str], dict[str, Any]]:
    data_id, inputs, outputs, config = msgpack.unpackb(raw, raw=False, use_list=True)
    return data_id, inputs, outputs, config


@dataclass(frozen=True, slots=True)
class Datasets:
    """Datasets as integers: what each quantum reads and writes (CSR, like successors). Only
    datasets no quantum produces keep their names (``externals``), for validation."""

    count: int
    in_ptr: array[int]  # "q"
    ins: array[int]  # "i"
    out_ptr: array[int]
    outs: array[int]
    externals: dict[int, str]

    def inputs_of(self, i: int) -> array[int]:
        return self.ins[self.in_ptr[i] : self.in_ptr[i + 1]]

    def outputs_of(self, i: int) -> array[int]:
        return self.outs[self.out_ptr[i] : self.out_ptr[i + 1]]


@dataclass(frozen=True, slots=True)
class Payloads:
    """Each quantum's (data_id, inputs, outputs, config), packed; ``unpack`` rebuilds them."""

    blob: bytes
    ptr: array[int]  # "q", n + 1 offsets into blob

    def raw(self, i: int) -> bytes:
        return self.blob[self.ptr[i] : self.ptr[i + 1]]


class GraphParts(NamedTuple):
    """Everything a ``QuantumGraph`` holds, checked and linked: ``QuantumGraph(*parts)``."""

    ids: list[str]
    kinds: list[tuple[str, str]]  # (task_label, task) pairs
    kind: array[int]  # "I", index into kinds per quantum
    topology: Topology
    datasets: Datasets
    payloads: Payloads
    timeouts: dict[int, float]  # only quanta with their own timeout
    id_index: dict[str, int]  # id -> index
    resources: dict[int, Amounts]  # only quanta with resources of their own
    label_resources: dict[str, Amounts]  # defaults by task label (a quantum's own win)


class GraphBuilder:
    """Collects quanta one at a time (checked fields), then links them into a graph."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self._kinds: dict[tuple[str, str], int] = {}
        self._kind: array[int] = array("I")
        self._payloads: list[bytes] = []
        self._timeouts: dict[int, float] = {}
        self._resources: dict[int, Amounts] = {}
        self._dataset: dict[str, int] = {}  # name -> dataset index, while building only
        self._producer: list[int] = []  # by dataset: producing quantum or -1
        self._ins: list[int] = []
        self._in_ptr: list[int] = [0]
        self._outs: list[int] = []
        self._out_ptr: list[int] = [0]

    def add(self, fields: Fields) -> None:
        qid, label, task, data_id, inputs, outputs, config, timeout_s, resources = fields
        i = len(self.ids)
        self.ids.append(qid)
        kind = self._kinds.setdefault((label, task), len(self._kinds))
        self._kind.append(kind)
        self._payloads.append(pack_payload(data_id, inputs, outputs, config))
        if timeout_s is not None:
            self._timeouts[i] = timeout_s
        if resources:
            self._resources[i] = resources
        for name in outputs.values():
            ds = self._dataset_index(name)
            if self._producer[ds] >= 0:
                both = [self.ids[self._producer[ds]], qid]
                raise GraphError(f"dataset {name!r} is produced by two quanta: {names(both)}", both)
            self._producer[ds] = i
            self._outs.append(ds)
        self._out_ptr.append(len(self._outs))
        self._ins.extend(self._dataset_index(name) for name in inputs.values())
        self._in_ptr.append(len(self._ins))

    def add_raw(self, raw: object) -> None:
        """One graph-file entry; ValueError naming what is wrong with it."""
        self.add(checked_fields(raw))

    def _dataset_index(self, name: str) -> int:
        ds = self._dataset.get(name)
        if ds is None:
            ds = self._dataset[name] = len(self._producer)
            self._producer.append(-1)
        return ds

    def build(
        self,
        edges: Iterable[tuple[str, str]] = (),
        label_resources: dict[str, Amounts] | None = None,
    ) -> GraphParts:
        """Link producers to readers, add ordering ``edges``; GraphError on a cycle, an
        unknown quantum in an edge, a duplicate id. ``label_resources``: defaults by task
        label, canonical (``common.resources``)."""
        producer = np.array(self._producer, dtype=np.int64)
        ins = np.array(self._ins, dtype=np.int64)
        readers = np.repeat(np.arange(len(self.ids), dtype=np.int64), np.diff(self._in_ptr))
        made = producer[ins] if len(ins) else ins
        src, dst = made[made >= 0], readers[made >= 0]
        index = index_of(self.ids)
        extra = []
        for a, b in edges:
            if a not in index or b not in index:
                missing = [x for x in (a, b) if x not in index]
                raise GraphError(f"ordering edge {a!r} -> {b!r} names unknown quanta", missing)
            extra.append((index[a], index[b]))
        if extra:
            pairs = np.array(extra, dtype=np.int64)
            src, dst = np.concatenate([src, pairs[:, 0]]), np.concatenate([dst, pairs[:, 1]])
        datasets = Datasets(
            len(self._producer),
            _ints("q", self._in_ptr),
            _ints("i", self._ins),
            _ints("q", self._out_ptr),
            _ints("i", self._outs),
            {ds: name for name, ds in self._dataset.items() if self._producer[ds] < 0},
        )
        ptr = np.zeros(len(self._payloads) + 1, dtype=np.int64)
        np.cumsum([len(p) for p in self._payloads], out=ptr[1:])
        payloads = Payloads(b"".join(self._payloads), _ints("q", ptr.tolist()))
        kinds = list(self._kinds)
        topology = linked(self.ids, src, dst)
        return GraphParts(
            self.ids,
            kinds,
            self._kind,
            topology,
            datasets,
            payloads,
            self._timeouts,
            index,
            self._resources,
            dict(label_resources or {}),
        )


def linked(ids: list[str], src: Any, dst: Any) -> Topology:
    """The topology of edges ``src[k] -> dst[k]``; GraphError naming a cycle's quanta."""
    try:
        return Topology.from_edges(len(ids), src, dst)
    except CycleError as e:
        raise cycle_error(ids, e) from e


def cycle_error(ids: list[str], e: CycleError) -> GraphError:
    """The GraphError naming the quanta of the cycle ``e`` found."""
    cycle = [ids[i] for i in e.cycle]
    return GraphError("graph has a cycle: " + " -> ".join([*cycle, cycle[0]]), cycle)


def _ints(code: str, values: Iterable[int]) -> array[int]:
    return array(code, values)


def index_of(ids: list[str]) -> dict[str, int]:
    """Quantum id -> index; GraphError naming the ids given twice."""
    index = {qid: i for i, qid in enumerate(ids)}
    if len(index) != len(ids):
        dupes = [qid for i, qid in enumerate(ids) if index[qid] != i]
        dupes = list(dict.fromkeys(dupes))
        raise GraphError(f"duplicate quantum ids: {names(dupes)}", dupes)
    return index
