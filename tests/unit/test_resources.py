"""Resource declarations: sizes and amounts, per quantum and per task label, in every graph
form and the Python API; a bad value is one line naming the quantum or label."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import GraphFileError
from common.graph import QuantumGraph
from common.quantum import Quantum
from common.resources import format_memory, parse_amount, parse_memory, parse_resources
from tests.graphs import quantum


@pytest.mark.parametrize(
    ("given", "mib"),
    [
        (2048, 2048.0),  # a plain number is MB, as LSST and BPS mean it
        (1.5, 1.5),
        ("512MB", 512.0),
        ("512 MiB", 512.0),
        ("2GB", 2048.0),
        ("1.5GiB", 1536.0),
        ("1g", 1024.0),
        ("1048576B", 1.0),
        ("1TB", 1024.0**2),
        ("300", 300.0),
    ],
)
def test_memory_sizes_are_read_in_mib(given: object, mib: float) -> None:
    assert parse_memory(given) == mib


@pytest.mark.parametrize("bad", ["lots", "2 GBs", "-1GB", "0", 0, -5, True, None, [1], "nan"])
def test_a_bad_memory_size_is_named(bad: object) -> None:
    with pytest.raises(ValueError, match="memory"):
        parse_memory(bad)


def test_cpus_are_whole_and_custom_resources_positive() -> None:
    assert parse_resources({"memory": "1GB", "cpus": 4, "db": 1, "gpu": 0.5}) == {
        "memory": 1024.0,
        "cpus": 4.0,
        "db": 1.0,
        "gpu": 0.5,
    }
    for name, bad in [("cpus", 0), ("cpus", 1.5), ("cpus", "2"), ("db", 0), ("db", "x")]:
        with pytest.raises(ValueError, match=name):
            parse_amount(name, bad)
    with pytest.raises(ValueError, match="not a name"):
        parse_amount("a b", 1)


def test_memory_is_shown_in_the_larger_unit() -> None:
    assert format_memory(512) == "512 MiB"
    assert format_memory(1536) == "1.5 GiB"


def _graph() -> QuantumGraph:
    return QuantumGraph.from_quanta(
        [
            quantum("a", label="isr", resources={"memory": "4GB"}),
            quantum("b", label="isr"),
            quantum("c", label="coadd", inputs=["a", "b"], resources={"cpus": 2, "db": 1}),
        ],
        resources={"isr": {"memory": 2000, "cpus": 1}, "coadd": {"memory": "8GB"}},
    )


def test_a_quantums_own_values_win_over_its_labels() -> None:
    g = _graph()
    assert g.request(g.index("a")) == {"memory": 4096.0, "cpus": 1.0}
    assert g.request(g.index("b")) == {"memory": 2000.0, "cpus": 1.0}
    assert g.request(g.index("c")) == {"memory": 8192.0, "cpus": 2.0, "db": 1.0}
    assert g.quantum("a").resources == {"memory": 4096.0}
    assert g.quantum("b").resources == {}


@pytest.mark.parametrize("suffix", [".yaml", ".json", ".zmpg"])
def test_every_graph_form_keeps_resources(tmp_path: Path, suffix: str) -> None:
    g = _graph()
    g.save(tmp_path / f"g{suffix}")
    loaded = QuantumGraph.load(tmp_path / f"g{suffix}")
    assert [loaded.request(i) for i in range(len(loaded))] == [g.request(i) for i in range(len(g))]
    assert loaded.label_resources == g.label_resources


def test_a_graph_file_with_a_bad_resource_names_the_quantum(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(
        "quanta:\n"
        "  - {id: a, task: 'tests.tasks:ok'}\n"
        "  - {id: b, task: 'tests.tasks:ok', resources: {memory: 2 elephants}}\n"
    )
    with pytest.raises(GraphFileError, match=r"quanta\[1\]: quantum 'b': memory '2 elephants'"):
        QuantumGraph.load(path)


def test_a_bad_label_block_names_the_label(tmp_path: Path) -> None:
    path = tmp_path / "g.json"
    path.write_text(
        '{"quanta": [{"id": "a", "task": "tests.tasks:ok"}], "resources": {"isr": {"cpus": 0}}}'
    )
    with pytest.raises(GraphFileError, match="resources of task label 'isr': cpus"):
        QuantumGraph.load(path)


def test_the_python_api_checks_resources_as_it_builds() -> None:
    with pytest.raises(ValueError, match="quantum 'q': memory"):
        Quantum(id="q", task_label="t", task="m:f", resources={"memory": "much"})
    with pytest.raises(ValueError, match="task label 'isr'"):
        QuantumGraph.from_quanta([quantum("a")], resources={"isr": {"memory": -1}})
