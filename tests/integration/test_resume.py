"""Kill the run at random moments and resume: nothing finished runs twice, nothing is lost."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from common.butler import Butler
from common.graph import QuantumGraph
from common.report import ExecutionStatus, Report
from tests.graphs import quantum

ROOT = Path(__file__).resolve().parents[2]


def _graph(tmp: Path, n_chains: int = 4, length: int = 6) -> QuantumGraph:
    """Chains of short quanta joined by a final gather; each records its executions."""
    common = {
        "repo": str(tmp / "repo"),
        "run": "main",
        "record": str(tmp / "record.txt"),
        "seconds": 0.05,
    }
    qs = []
    for c in range(n_chains):
        for i in range(length):
            qid = f"c{c}-{i}"
            qs.append(
                quantum(
                    qid,
                    "journaled",
                    inputs=[f"c{c}-{i - 1}"] if i else [],
                    config={**common, "me": qid, "out": qid},
                )
            )
    ends = [f"c{c}-{length - 1}" for c in range(n_chains)]
    qs.append(
        quantum(
            "gather", "journaled", inputs=ends, config={**common, "me": "gather", "out": "gather"}
        )
    )
    return QuantumGraph.from_quanta(qs)


def _run(tmp: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scripts.cli",
            "run",
            "g.json",
            "-j",
            "2",
            "--repo",
            "repo",
            "--summary",
            "s.json",
            *extra,
        ],
        cwd=tmp,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_and_resume_never_reruns_finished_work(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    graph = _graph(tmp_path)
    graph.save(tmp_path / "g.json")
    cycles = 0
    # Given a run SIGKILLed at random moments, resumed each time until it completes
    proc = _run(tmp_path)
    while True:
        try:
            proc.wait(timeout=rng.uniform(0.3, 1.2))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=30)
            cycles += 1
            proc = _run(tmp_path, "--resume")
            continue
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        break
    # Then every quantum's output is registered, and none ran after its output existed
    butler = Butler(tmp_path / "repo", "main")
    assert all(butler.get(q.id) == q.id for q in graph.quanta())
    record = (tmp_path / "record.txt").read_text().split("\n")
    assert not [line for line in record if line.startswith("DUP")]
    report = Report.from_json((tmp_path / "s.json").read_text())
    assert report.counts()[ExecutionStatus.SUCCESS] == len(graph)
    assert cycles >= 1


def test_resume_after_a_failure_reruns_only_what_did_not_finish(tmp_path: Path) -> None:
    # Given a run where one chain fails half way
    graph = _graph(tmp_path, n_chains=2, length=3)
    data = graph.to_data()
    for q in data["quanta"]:
        if q["id"] == "c1-1":
            q["task"] = "tests.tasks:fail"
    QuantumGraph.from_data(data).save(tmp_path / "g.json")
    first = _run(tmp_path)
    assert first.wait(timeout=60) == 1
    first.communicate()
    before = len((tmp_path / "record.txt").read_text().splitlines())
    # When the task is fixed and the run resumed
    graph.save(tmp_path / "g.json")
    again = _run(tmp_path, "--resume")
    assert again.wait(timeout=60) == 0, again.communicate()[1]
    again.communicate()
    # Then only the failed quantum and what it blocked ran again
    lines = (tmp_path / "record.txt").read_text().splitlines()[before:]
    assert sorted(line.split()[1] for line in lines) == ["c1-1", "c1-2", "gather"]


@pytest.mark.parametrize("resume", [False, True])
def test_partial_writes_of_killed_processes_are_removed_at_start(
    tmp_path: Path, resume: bool
) -> None:
    # Given a store holding the temporary file of a write killed before its rename
    from broker import MPGraphExecutor
    from tests.graphs import independent
    from worker.executor import TaskQuantumExecutor

    butler = Butler(tmp_path / "repo")
    store = tmp_path / "repo" / "store" / "main"
    (store / ".tmp-k1ll3d").write_bytes(b"half a pickle")
    # When a run (or a resumed one) starts
    ex = MPGraphExecutor(1, None, TaskQuantumExecutor(), run_dir=tmp_path / "run", resume=resume)
    ex.execute(independent(2), butler)
    # Then the leftover is gone and never registered; the run's outputs are
    assert not list(store.glob(".tmp-*"))
    assert sorted(butler.names()) == ["q0", "q1"]
