"""Graph files: our compact binary form (``.zmpg``), JSON and YAML. Reads give ``GraphParts``
(``QuantumGraph.load`` wraps them) and check everything, raising GraphFileError with one line
naming the file and the problem; writes take any graph with the parts and ``to_data``. Must not
run tasks.

``.zmpg`` is ``MAGIC`` then one msgpack map of columns: ids, (label, task) kinds, and the
flat arrays of ``Topology`` and ``Datasets`` as little-endian bytes, so a million quanta
load in about a second with no per-quantum Python objects but their ids.
"""

from __future__ import annotations

import json
import sys
from array import array
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final, Protocol

import msgpack
import msgspec
import numpy as np
import yaml

from common.errors import GraphError, GraphFileError
from common.graphparts import Datasets, GraphBuilder, GraphParts, Payloads, cycle_error, index_of
from common.resources import Amounts, parse_label_resources, parse_resources
from common.topology import CycleError, Topology, as_numpy

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "SUFFIXES",
    "YAML_LOADER",
    "graph_from_data",
    "read_graph",
    "write_graph",
]

MAGIC: Final = b"ZMPG\x00"
FORMAT_VERSION: Final = 2  # 2: resources (version 1 files are read as declaring none)
SUFFIXES: Final = (".zmpg", ".json", ".yaml", ".yml")

# libyaml's C loader when PyYAML was built with it: a 12,101-quantum graph reads in 2.9 s
# instead of 8.9 s. Both are safe loaders (plain data only).
YAML_LOADER: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_YAML_DUMPER: type[Any] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

_ARRAYS: Final = {  # column -> array typecode
    "kind": "I",
    "succ_ptr": "q",
    "succ": "i",
    "depth": "i",
    "in_ptr": "q",
    "ins": "i",
    "out_ptr": "q",
    "outs": "i",
    "payload_ptr": "q",
}


# ---------------------------------------------------------------------- reading
def read_graph(path: Path, yaml_loader: type[Any] | None = None) -> GraphParts:
    if path.suffix not in SUFFIXES:
        raise GraphFileError(f"graph file {path}: unknown suffix (use {', '.join(SUFFIXES)})")
    if path.suffix == ".json":
        return _read_json(path)
    data = _read_bytes(path)
    if path.suffix == ".zmpg":
        return _read_binary(data, path)
    try:
        raw = yaml.load(data, Loader=yaml_loader or YAML_LOADER)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise GraphFileError(
            f"graph file {path} is not valid {path.suffix[1:]}: {_one_line(e)}"
        ) from e
    return graph_from_data(raw, str(path))


class _JsonGraphFile(msgspec.Struct):
    """A JSON graph file's top level. Each quantum stays raw bytes (a slice of the file)
    until the builder takes it, so the file never becomes one tree of Python objects: a
    graph read from JSON peaks at the file's size plus the compact model."""

    quanta: list[msgspec.Raw]
    edges: Any = msgspec.field(default_factory=list)
    resources: Any = None


_JSON_FILE: Final = msgspec.json.Decoder(_JsonGraphFile)
_JSON_ENTRY: Final = msgspec.json.Decoder()


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise GraphFileError(f"cannot read graph file {path}: {e.strerror or e}") from e


def _read_json(path: Path) -> GraphParts:
    source = str(path)
    data = _read_bytes(path)
    try:
        top = _JSON_FILE.decode(data)
        builder = _added((_JSON_ENTRY.decode(entry) for entry in top.quanta), source)
    except msgspec.DecodeError:
        # What msgspec refuses, Python's json may still read (NaN and Infinity, which our own
        # writer emits; a byte-order mark; UTF-16) or name the problem as it always did.
        return _read_json_plainly(data, source)
    edges, resources = top.edges, top.resources
    del top, data  # the file's bytes are not needed to link the graph
    return _linked(builder, edges, resources, source)


def _read_json_plainly(data: bytes, source: str) -> GraphParts:
    try:
        raw = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GraphFileError(f"graph file {source} is not valid json: {_one_line(e)}") from e
    return graph_from_data(raw, source)


def graph_from_data(raw: object, source: str) -> GraphParts:
    if not isinstance(raw, dict) or not isinstance(raw.get("quanta"), list):
        raise GraphFileError(f"{source}: expected a mapping with a 'quanta' list")
    edges, resources = raw.get("edges", []), raw.get("resources")
    return _linked(_added(raw["quanta"], source), edges, resources, source)


def _added(entries: Iterable[object], source: str) -> GraphBuilder:
    """A builder holding ``entries`` (each a graph file's quantum, checked as it is added)."""
    builder = GraphBuilder()
    for i, entry in enumerate(entries):
        try:
            builder.add_raw(entry)
        except ValueError as e:
            raise GraphFileError(f"{source}: quanta[{i}]: {e}") from e
    return builder


def _linked(builder: GraphBuilder, edges: object, resources: object, source: str) -> GraphParts:
    """The graph of what ``builder`` holds, the ordering ``edges`` and the ``resources``
    block (defaults by task label)."""
    if not isinstance(edges, list) or not all(
        isinstance(e, list | tuple) and len(e) == 2 and all(isinstance(x, str) for x in e)
        for e in edges
    ):
        raise GraphFileError(f"{source}: 'edges' must be a list of [from_id, to_id] pairs")
    try:
        by_label = parse_label_resources(resources)
    except ValueError as e:
        raise GraphFileError(f"{source}: {e}") from e
    return builder.build([(a, b) for a, b in edges], by_label)


def _one_line(e: Exception) -> str:
    if isinstance(e, yaml.MarkedYAMLError) and e.problem_mark is not None:
        mark = e.problem_mark
        return f"{e.problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(e).split())


def _read_binary(data: bytes, path: Path) -> GraphParts:
    if not data.startswith(MAGIC):
        raise GraphFileError(f"graph file {path} is not a zmpexec binary graph (no ZMPG header)")
    try:
        cols = msgpack.unpackb(memoryview(data)[len(MAGIC) :], raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises several unrelated types for bad input
        raise GraphFileError(
            f"graph file {path} is truncated or corrupt: {type(e).__name__}: {e}"
        ) from e
    del data
    if not isinstance(cols, dict):
        raise GraphFileError(f"graph file {path} is corrupt: no column map")
    version = cols.get("version")
    if version not in (1, FORMAT_VERSION):
        raise GraphFileError(
            f"graph file {path} has format version {version!r}; this zmpexec reads versions "
            f"1 to {FORMAT_VERSION}: convert the graph again with this zmpexec"
        )
    try:
        return _columns_to_graph(cols)
    except GraphError as e:
        raise GraphFileError(f"graph file {path}: {e}", e.quanta) from e
    except (KeyError, TypeError, ValueError) as e:
        raise GraphFileError(f"graph file {path} is corrupt: {_one_line(e)}") from e


def _array(cols: dict[str, Any], name: str) -> array[Any]:
    raw = cols.pop(name)  # each column freed once copied: a lower peak while loading
    if not isinstance(raw, bytes):
        raise TypeError(f"column {name!r} is not bytes")
    out: array[Any] = array(_ARRAYS[name])
    if len(raw) % out.itemsize:
        raise ValueError(f"column {name!r} is not a whole number of items")
    out.frombytes(raw)
    if sys.byteorder != "little":
        out.byteswap()
    return out


def _offsets(ptr: array[int], n: int, total: int, what: str) -> None:
    p = as_numpy(ptr)
    if len(p) != n + 1 or p[0] != 0 or p[-1] != total or (n and np.any(np.diff(p) < 0)):
        raise ValueError(f"{what} offsets do not fit {n} quanta and {total} items")


def _columns_to_graph(cols: dict[str, Any]) -> GraphParts:
    ids = cols["ids"]
    if not isinstance(ids, list) or not all(type(i) is str and i for i in ids):
        raise TypeError("ids must be non-empty strings")
    n = len(ids)
    index = index_of(ids)  # GraphError naming duplicates
    kinds = [tuple(k) for k in cols["kinds"]]
    if not all(len(k) == 2 and all(type(x) is str and x for x in k) for k in kinds):
        raise TypeError("kinds must be [task_label, task] pairs")
    kind = _array(cols, "kind")
    if len(kind) != n or (n and int(as_numpy(kind).max()) >= len(kinds)):
        raise ValueError("kind column does not fit the quanta")
    depth = _array(cols, "depth")
    if len(depth) != n:
        raise ValueError("depth column does not fit the quanta")
    try:
        topology = Topology.from_arrays(_array(cols, "succ_ptr"), _array(cols, "succ"), depth)
    except CycleError as e:
        raise cycle_error(ids, e) from e
    datasets = _datasets(cols, n)
    payload = cols["payload"]
    if not isinstance(payload, bytes):
        raise TypeError("payload column is not bytes")
    payloads = Payloads(payload, _array(cols, "payload_ptr"))
    _offsets(payloads.ptr, n, len(payload), "payload")
    _check_payloads(payloads, ids)
    timeouts = {int(i): float(t) for i, t in cols["timeouts"]}
    if any(not 0 <= i < n or not t > 0 for i, t in timeouts.items()):
        raise ValueError("a timeout names no quantum or is not positive")
    own: dict[int, Amounts] = {}
    for i, amounts in cols.get("resources", []):
        if type(i) is not int or not 0 <= i < n:
            raise ValueError("a resource declaration names no quantum")
        try:
            own[i] = parse_resources(amounts)
        except ValueError as e:
            raise ValueError(f"quantum {ids[i]!r}: {e}") from e
    by_label = parse_label_resources(cols.get("label_resources"))
    return GraphParts(
        ids, kinds, kind, topology, datasets, payloads, timeouts, index, own, by_label
    )


def _check_payloads(payloads: Payloads, ids: list[str]) -> None:
    """Each payload is one (data_id, inputs, outputs, config) record ending where its offset
    says: about 2 us per quantum, so the broker never meets a bad one mid-run."""
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(payloads.blob)
    ptr = payloads.ptr
    for i, record in enumerate(unpacker):
        if i >= len(ids):
            raise ValueError("more payloads than quanta")
        if (
            type(record) is not list
            or len(record) != 4
            or not all(type(part) is dict for part in record)
            or unpacker.tell() != ptr[i + 1]
        ):
            raise ValueError(f"the payload of quantum {ids[i]!r} is malformed")


def _datasets(cols: dict[str, Any], n: int) -> Datasets:
    count = cols["datasets"]
    if type(count) is not int or count < 0:
        raise TypeError("dataset count must be a non-negative integer")
    ins, outs = _array(cols, "ins"), _array(cols, "outs")
    in_ptr, out_ptr = _array(cols, "in_ptr"), _array(cols, "out_ptr")
    _offsets(in_ptr, n, len(ins), "input")
    _offsets(out_ptr, n, len(outs), "output")
    for column in (ins, outs):
        if (
            len(column)
            and not 0 <= int(as_numpy(column).min()) <= int(as_numpy(column).max()) < count
        ):
            raise ValueError("a dataset index is out of range")
    if len(np.unique(as_numpy(outs))) != len(outs):
        raise ValueError("a dataset is produced by two quanta")
    externals = {int(ds): str(name) for ds, name in cols["externals"]}
    return Datasets(count, in_ptr, ins, out_ptr, outs, externals)


# ---------------------------------------------------------------------- writing
class Writable(Protocol):
    """What writing needs of a graph: its parts, and its plain data for JSON and YAML."""

    ids: list[str]
    kinds: list[tuple[str, str]]
    kind: array[int]
    topology: Topology
    datasets: Datasets
    payloads: Payloads
    timeouts: dict[int, float]
    resources: dict[int, Amounts]
    label_resources: dict[str, Amounts]

    def to_data(self) -> dict[str, Any]: ...


def write_graph(graph: Writable, path: Path) -> None:
    if path.suffix == ".zmpg":
        data = MAGIC + msgpack.packb(_columns(graph), use_bin_type=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)  # a reader never sees half a file
        return
    if path.suffix in (".yaml", ".yml"):
        text = yaml.dump(graph.to_data(), Dumper=_YAML_DUMPER, sort_keys=False)
    elif path.suffix == ".json":
        text = json.dumps(graph.to_data(), indent=1)
    else:
        raise GraphFileError(f"graph file {path}: unknown suffix (use {', '.join(SUFFIXES)})")
    path.write_text(text)


def _little(a: array[Any]) -> bytes:
    if sys.byteorder == "little":
        return a.tobytes()
    swapped = array(a.typecode, a)
    swapped.byteswap()
    return swapped.tobytes()


def _columns(graph: Writable) -> dict[str, Any]:
    t, d = graph.topology, graph.datasets
    return {
        "version": FORMAT_VERSION,
        "ids": graph.ids,
        "kinds": [list(k) for k in graph.kinds],
        "kind": _little(graph.kind),
        "succ_ptr": _little(t.succ_ptr),
        "succ": _little(t.succ),
        "depth": _little(t.depth),
        "datasets": d.count,
        "in_ptr": _little(d.in_ptr),
        "ins": _little(d.ins),
        "out_ptr": _little(d.out_ptr),
        "outs": _little(d.outs),
        "externals": [[ds, name] for ds, name in d.externals.items()],
        "payload_ptr": _little(graph.payloads.ptr),
        "payload": graph.payloads.blob,
        "timeouts": [[i, s] for i, s in graph.timeouts.items()],
        "resources": [[i, r] for i, r in graph.resources.items()],
        "label_resources": graph.label_resources,
    }
