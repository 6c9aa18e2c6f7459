"""Graph building, files and validation: each bad graph names the offending quanta."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest

from common.butler import Butler
from common.errors import GraphError, GraphFileError
from common.graph import QuantumGraph
from tests.graphs import chain, quantum


def test_edges_follow_datasets_and_explicit_ordering() -> None:
    g = QuantumGraph.from_quanta(
        [quantum("a"), quantum("b", inputs=["a"]), quantum("c")], edges=[("c", "a")]
    )
    assert set(g.xgraph.edges) == {("a", "b"), ("c", "a")}


def test_duplicate_ids_are_named() -> None:
    with pytest.raises(GraphError, match="duplicate quantum ids: 'a'") as info:
        QuantumGraph.from_quanta([quantum("a"), quantum("a", outputs=["x"])])
    assert info.value.quanta == ("a",)


def test_two_producers_of_one_dataset_are_named() -> None:
    with pytest.raises(GraphError, match="'d' is produced by two quanta: 'a', 'b'"):
        QuantumGraph.from_quanta([quantum("a", outputs=["d"]), quantum("b", outputs=["d"])])


def test_cycle_is_named_when_the_graph_is_built() -> None:
    with pytest.raises(GraphError, match="cycle: ") as info:
        QuantumGraph.from_quanta(
            [quantum("a", inputs=["c"]), quantum("b", inputs=["a"]), quantum("c", inputs=["b"])]
            + [quantum(f"free{i}") for i in range(3)]
        )
    assert set(info.value.quanta) == {"a", "b", "c"}
    assert str(info.value) == "graph has a cycle: b -> c -> a -> b"


def test_unproduced_input_missing_from_the_butler_is_named(butler: Butler) -> None:
    g = QuantumGraph.from_quanta([quantum("a", inputs=["raw"])])
    with pytest.raises(GraphError, match="'raw' \\(needed by 'a'\\)"):
        g.validate(butler)
    butler.put("raw", 1)
    g.validate(butler)


def test_unimportable_task_is_named() -> None:
    q = quantum("a")
    bad = type(q)(id="b", task_label="x", task="no_such_module_zz:run", outputs={"b": "b"})
    missing_attr = type(q)(id="c", task_label="y", task="tests.tasks:nope", outputs={"c": "c"})
    with pytest.raises(GraphError, match=r"no_such_module_zz.*used by 'b'"):
        QuantumGraph.from_quanta([q, bad]).validate()
    with pytest.raises(GraphError, match=r"has no .nope..*used by 'c'"):
        QuantumGraph.from_quanta([q, missing_attr]).validate()


@pytest.mark.parametrize("suffix", [".yaml", ".json", ".zmpg"])
def test_files_round_trip(tmp_path: Path, suffix: str) -> None:
    g = QuantumGraph.from_quanta(
        [quantum("a", timeout_s=2.0), quantum("b", inputs={"x": "a"}), quantum("c")],
        edges=[("c", "b")],
    )
    path = tmp_path / f"g{suffix}"
    g.save(path)
    again = QuantumGraph.load(path)
    assert again.quanta() == g.quanta()
    assert set(again.xgraph.edges) == set(g.xgraph.edges)


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("g.yaml", "quanta: [", "not valid yaml"),
        ("g.json", "{", "not valid json"),
        ("g.txt", "", "unknown suffix"),
        ("g.yaml", "- 1", "expected a mapping with a 'quanta' list"),
        ("g.yaml", "quanta:\n- {id: a}", "quanta\\[0\\].*task must be"),
        ("g.yaml", "quanta:\n- {id: a, task: 'm:f', colour: red}", "unknown quantum field"),
        ("g.yaml", "quanta:\n- {id: a, task: 'm:f', timeout: -1}", "timeout must be a positive"),
        ("g.yaml", "quanta:\n- {id: a, task: 'm:f', timeout: .nan}", "timeout must be a positive"),
        ("g.yaml", "quanta: []\nedges: [[a]]", "'edges' must be"),
        ("g.json", "[1]", "expected a mapping with a 'quanta' list"),
        ("g.json", '{"quanta": 3}', "expected a mapping with a 'quanta' list"),
        ("g.json", '{"quanta": [{"id": "a"}]}', "quanta\\[0\\].*task must be"),
        ("g.json", '{"quanta": [{"id": "a", "task": "m:f", "timeout": -1}]}', "timeout must"),
        ("g.json", '{"quanta": [], "edges": [["a"]]}', "'edges' must be"),
    ],
)
def test_malformed_files_give_clear_errors(
    tmp_path: Path, name: str, text: str, match: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(GraphFileError, match=match):
        QuantumGraph.load(path)


def test_missing_file_is_a_graph_file_error(tmp_path: Path) -> None:
    with pytest.raises(GraphFileError, match="cannot read"):
        QuantumGraph.load(tmp_path / "nope.yaml")


def test_chain_helper_is_a_chain() -> None:
    assert len(chain(4).xgraph.edges) == 3


def test_ipc_paths_beyond_the_socket_limit_are_refused(tmp_path: Path) -> None:
    from broker.graph_executor import _endpoint_for
    from common.errors import ConfigError

    long = tmp_path / ("d" * 60) / ("s" * 60)
    with pytest.raises(ConfigError, match="limit is 107"):
        _endpoint_for(f"ipc://{long}.sock")
    with pytest.raises(ConfigError, match="does not exist"):
        _endpoint_for(f"ipc://{tmp_path}/nodir/b.sock")
    sock_dir, endpoint = _endpoint_for(None)
    try:
        assert sock_dir is not None and oct(sock_dir.stat().st_mode & 0o777) == "0o700"
        assert endpoint == f"ipc://{sock_dir}/broker.sock"
    finally:
        assert sock_dir is not None
        sock_dir.rmdir()


@pytest.mark.parametrize("loader", ["libyaml", "pure-python"])
def test_yaml_graphs_read_the_same_with_libyaml_and_without(tmp_path: Path, loader: str) -> None:
    import yaml

    from common import graphfile as graph_module

    if loader == "libyaml":
        if not yaml.__with_libyaml__:
            pytest.skip("PyYAML was built without libyaml here")
        assert graph_module.YAML_LOADER is yaml.CSafeLoader  # the default where available
    chosen = yaml.CSafeLoader if loader == "libyaml" else yaml.SafeLoader
    original = QuantumGraph.from_quanta(
        [quantum("a", data_id={"visit": 1}), quantum("b", inputs=["a"], timeout_s=2.5)]
    )
    original.save(tmp_path / "g.yaml")
    loaded = QuantumGraph.load(tmp_path / "g.yaml", yaml_loader=chosen)
    assert loaded.quanta() == original.quanta()
    assert set(loaded.xgraph.edges) == set(original.xgraph.edges)
    (tmp_path / "bad.yaml").write_text("quanta: [unclosed")
    with pytest.raises(GraphFileError, match="is not valid yaml"):
        QuantumGraph.load(tmp_path / "bad.yaml", yaml_loader=chosen)


def test_binary_graph_keeps_every_part_of_the_graph(tmp_path: Path) -> None:
    g = QuantumGraph.from_quanta(
        [
            quantum("a", data_id={"visit": 7, "band": "r"}, config={"k": [1, 2]}),
            quantum("b", inputs={"x": "a", "r": "raw"}, outputs={"o": "b1", "p": "b2"}),
            quantum("c", inputs=["b1", "b2"], timeout_s=1.5),
        ],
        edges=[("a", "c")],
    )
    g.save(tmp_path / "g.zmpg")
    again = QuantumGraph.load(tmp_path / "g.zmpg")
    assert again.quanta() == g.quanta()
    assert set(again.xgraph.edges) == {("a", "b"), ("b", "c"), ("a", "c")}
    assert (
        again.datasets.externals == g.datasets.externals and "raw" in g.datasets.externals.values()
    )
    assert list(again.topology.depth) == [0, 1, 2]
    assert again.task_counts() == g.task_counts()


def test_binary_graph_with_a_wrong_depth_is_still_read_correctly(tmp_path: Path) -> None:
    from common import graphfile

    g = chain(3)
    cols = graphfile._columns(g)
    cols["depth"] = bytes(len(cols["depth"]))  # every depth 0: proves nothing
    (tmp_path / "g.zmpg").write_bytes(graphfile.MAGIC + msgpack.packb(cols))
    assert list(QuantumGraph.load(tmp_path / "g.zmpg").topology.depth) == [0, 1, 2]


def test_json_graphs_read_what_python_json_reads(tmp_path: Path) -> None:
    # Given JSON our own writer makes from infinite config values, and one with a BOM
    g = QuantumGraph.from_quanta([quantum("a", config={"x": float("inf")})])
    g.save(tmp_path / "g.json")
    assert "Infinity" in (tmp_path / "g.json").read_text()
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + (tmp_path / "g.json").read_bytes())
    # Then both read back as they did through Python's json
    for path in (tmp_path / "g.json", bom):
        assert QuantumGraph.load(path).quantum_at(0).config == {"x": float("inf")}


def test_a_json_quantum_that_is_not_utf8_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "g.json"
    path.write_bytes(b'{"quanta": [{"id": "caf\xe9", "task": "m:f"}]}')
    with pytest.raises(GraphFileError, match="not valid json"):
        QuantumGraph.load(path)
