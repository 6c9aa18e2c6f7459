"""Admission by resources with real workers: the budget is never exceeded (from the tasks'
own start and end marks), a custom resource caps the quanta that declare it, a quantum too big
for the budget is refused before anything runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker import MPGraphExecutor
from common.butler import Butler
from common.errors import GraphError
from common.graph import QuantumGraph
from common.report import Reason
from tests.graphs import quantum
from tests.tasks import most_at_once
from worker.executor import TaskQuantumExecutor


def _run(graph: QuantumGraph, tmp: Path, jobs: int = 4, **options: Any) -> MPGraphExecutor:
    ex = MPGraphExecutor(jobs, None, TaskQuantumExecutor(), run_dir=tmp / "run", **options)
    with Butler(tmp / "repo") as butler:
        ex.execute(graph, butler)
    return ex


def test_the_memory_budget_is_never_exceeded(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    config = {"path": str(marks), "seconds": 0.4}
    graph = QuantumGraph.from_quanta(
        [quantum(f"q{n}", "mark_interval", config={**config, "tag": f"q{n}"}) for n in range(6)],
        resources={"mark_interval": {"memory": "400MB"}},
    )
    _run(graph, tmp_path, jobs=4, memory="1000MB")
    assert most_at_once(str(marks)) == 2  # four workers, room for two


def test_a_custom_resource_caps_the_quanta_that_declare_it(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    config = {"path": str(marks), "seconds": 0.3}
    graph = QuantumGraph.from_quanta(
        [
            quantum(f"db{n}", "mark_interval", label="db", config={**config, "tag": f"db{n}"})
            for n in range(4)
        ]
        + [
            quantum(f"free{n}", "mark_interval", label="free", config={**config, "tag": f"f{n}"})
            for n in range(4)
        ],
        resources={"db": {"db": 1}},
    )
    _run(graph, tmp_path, jobs=4, resources={"db": 1})
    assert most_at_once(str(marks), {f"db{n}" for n in range(4)}) == 1
    assert most_at_once(str(marks)) >= 2  # the others ran beside them


def test_a_quantum_bigger_than_the_budget_is_refused_before_anything_runs(
    tmp_path: Path,
) -> None:
    marks = tmp_path / "marks"
    graph = QuantumGraph.from_quanta(
        [
            quantum("small", "mark_interval", config={"path": str(marks), "tag": "s"}),
            quantum("huge", resources={"memory": "64GB"}),
        ]
    )
    with pytest.raises(GraphError, match=r"'huge' asks for 64.0 GiB of memory, more than"):
        _run(graph, tmp_path, jobs=2, memory="2GB")
    assert not marks.exists()


def test_memory_pressure_puts_quanta_back_instead_of_losing_them(tmp_path: Path) -> None:
    # Given quanta that declare 100 MB but grow to 400 MB (not enforced), three at once
    # under a 1000 MB budget
    graph = QuantumGraph.from_quanta(
        [quantum(f"g{n}", "touch_and_hold", config={"mb": 400, "seconds": 4.0}) for n in range(3)],
        resources={"touch_and_hold": {"memory": 100}},
    )
    ex = _run(
        graph, tmp_path, jobs=3, memory="1000MB", memory_enforce="off", heartbeat_interval_s=0.2
    )
    # Then the run completes, and what measured over the budget was put back, not failed
    report = ex.getReport()
    details = [report.details(f"g{n}") for n in range(3)]
    assert all(d.reason is None and d.attempts == 1 for d in details)
    assert sum(d.putBack for d in details) >= 1


def test_a_quantum_that_outgrows_its_request_succeeds_with_the_multiplier(
    tmp_path: Path,
) -> None:
    # Given a quantum that holds 150 MB but asks for 100 MB, and a memory multiplier of 2
    graph = QuantumGraph.from_quanta(
        [quantum("grow", "touch_and_hold", config={"mb": 150, "seconds": 0.5})],
        resources={"touch_and_hold": {"memory": "100MB"}},
    )
    ex = _run(graph, tmp_path, jobs=2, memory="2GB", memory_multiplier=2.0, retries=2)
    # Then the first attempt was killed for memory, the second (200 MB) succeeded
    d = ex.getReport().details("grow")
    assert (d.reason, d.attempts, d.memoryRequest) == (None, 2, 200)
    [first] = d.earlier
    assert (first.reason, first.memoryRequest) == (Reason.MEMORY, 100)
    assert first.maxRss is not None and first.maxRss > 100 * 1024


@pytest.mark.parametrize("jobs", [1, 2])
def test_an_attempt_reads_what_it_was_given(tmp_path: Path, jobs: int) -> None:
    # Given a quantum declaring 300 MB and 2 cores, one taking the run's default memory and
    # one declaring nothing, in a run with no default cores
    graph = QuantumGraph.from_quanta(
        [
            quantum("declared", "allotment", resources={"memory": 300, "cpus": 2}),
            quantum("default", "allotment"),
        ]
    )
    ex = MPGraphExecutor(
        jobs, None, TaskQuantumExecutor(), run_dir=tmp_path / "run", memory_per_quantum="200MB"
    )
    with Butler(tmp_path / "repo") as butler:
        ex.execute(graph, butler)
        # Then each read its own (in a worker's executor and in-process alike)
        assert butler.get("declared") == [300.0, 2.0]
        assert butler.get("default") == [200.0, None]
