"""Real LSST pipelines through zmpexec: an on-disk Butler repository, pipe_base's AddTask
pipeline and its quantum graph, LSST's SingleQuantumExecutor on zmpexec's workers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy
import pytest
from lsst.daf.butler import Butler
from lsst.daf.butler.logging import ButlerLogRecords
from lsst.pipe.base import QuantumAttemptStatus, QuantumSuccessCaveats, TaskFactory
from lsst.pipe.base.mp_graph_executor import MPGraphExecutorError, MPTimeoutError
from lsst.pipe.base.quantum_graph import (
    PredictedQuantumGraph,
    PredictedQuantumGraphComponents,
    PredictedQuantumGraphReader,
    ProvenanceQuantumGraph,
)
from lsst.pipe.base.quantum_reports import ExecutionStatus, Report
from lsst.pipe.base.single_quantum_executor import SingleQuantumExecutor

from broker.lsst import MPGraphExecutor, read_schedule
from examples.lsst_pipeline import make_repo_and_graph
from worker.lsst import KEPT_PREVIOUS_QUANTA, GraphFile

warnings.filterwarnings("ignore", category=FutureWarning)
ROOT = Path(__file__).resolve().parents[2]
INPUT = numpy.array([0.0, 1.0, 2.0, 5.0])


def _executor(
    repo: Path, tmp: Path, *, timeout: float = 60.0, fail_fast: bool = False
) -> MPGraphExecutor:
    butler = Butler.from_config(str(repo), run="test", writeable=True)
    qexec = SingleQuantumExecutor(butler=butler, task_factory=TaskFactory())
    return MPGraphExecutor(
        num_proc=3,
        timeout=timeout,
        quantum_executor=qexec,
        fail_fast=fail_fast,
        run_dir=tmp / "run",
    )


def _statuses(report: Report) -> dict[str, int]:
    out: dict[str, int] = {}
    for q in report.quantaReports:
        out[q.status.value] = out.get(q.status.value, 0) + 1
    return out


def test_all_quanta_succeed_and_outputs_logs_and_metadata_are_in_the_butler(
    tmp_path: Path,
) -> None:
    butler, qgraph = make_repo_and_graph(tmp_path / "repo", n_tasks=3, n_detectors=4)
    ex = _executor(tmp_path / "repo", tmp_path)
    ex.execute(qgraph)
    report = ex.getReport()
    assert report.status is ExecutionStatus.SUCCESS
    assert _statuses(report) == {"success": 12}
    assert all(q.exitCode == 0 for q in report.quantaReports)
    butler = Butler.from_config(str(tmp_path / "repo"), collections="test")
    for det in range(4):
        out = butler.get("add_dataset3", instrument="INSTR", detector=det)
        assert numpy.array_equal(out, INPUT + 9)  # three AddTasks of +3
        assert butler.get("task2_metadata", instrument="INSTR", detector=det) is not None
        assert len(butler.get("task2_log", instrument="INSTR", detector=det)) > 0
    # the summary is LSST's own model and survives its JSON round trip
    assert Report.model_validate_json(report.model_dump_json()) == report


def test_failing_task_skips_only_its_descendants(tmp_path: Path) -> None:
    _, qgraph = make_repo_and_graph(
        tmp_path / "repo", n_tasks=3, n_detectors=4, flaky={"fail_detector": 2}
    )
    ex = _executor(tmp_path / "repo", tmp_path)
    with pytest.raises(MPGraphExecutorError, match="detector 2 failed on purpose"):
        ex.execute(qgraph)
    report = ex.getReport()
    assert _statuses(report) == {"success": 10, "failure": 1, "skipped": 1}
    (bad,) = [q for q in report.quantaReports if q.status is ExecutionStatus.FAILURE]
    assert (bad.taskLabel, bad.dataId["detector"]) == ("task1", 2)
    assert bad.exceptionInfo is not None and bad.exceptionInfo.className == "RuntimeError"


def test_timeout_kills_the_quantum_and_raises_lsst_timeout_error(tmp_path: Path) -> None:
    _, qgraph = make_repo_and_graph(
        tmp_path / "repo", n_tasks=2, n_detectors=3, flaky={"sleep_detector": 1, "sleep_s": 60.0}
    )
    ex = _executor(tmp_path / "repo", tmp_path, timeout=2.0)
    t0 = time.monotonic()
    with pytest.raises(MPTimeoutError):
        ex.execute(qgraph)
    assert time.monotonic() - t0 < 30
    assert _statuses(ex.getReport()) == {"success": 5, "timeout": 1}


def test_fail_fast_stops_and_reports_every_quantum(tmp_path: Path) -> None:
    _, qgraph = make_repo_and_graph(
        tmp_path / "repo",
        n_tasks=3,
        n_detectors=4,
        flaky={"fail_detector": 0, "sleep_detector": 1, "sleep_s": 60.0},
    )
    ex = _executor(tmp_path / "repo", tmp_path, fail_fast=True)
    t0 = time.monotonic()
    with pytest.raises(MPGraphExecutorError):
        ex.execute(qgraph)
    assert time.monotonic() - t0 < 30
    report = ex.getReport()
    assert len(report.quantaReports) == 12
    assert _statuses(report)["failure"] == 1


def test_invalid_quantum_error_exits_21_and_stops_the_run(tmp_path: Path) -> None:
    _, qgraph = make_repo_and_graph(
        tmp_path / "repo",
        n_tasks=3,
        n_detectors=4,
        flaky={"invalid_detector": 0, "sleep_detector": 1, "sleep_s": 60.0},
    )
    ex = _executor(tmp_path / "repo", tmp_path, fail_fast=False)
    t0 = time.monotonic()
    with pytest.raises(MPGraphExecutorError):
        ex.execute(qgraph)
    assert time.monotonic() - t0 < 30  # the sleeping quantum was not waited for
    report = ex.getReport()
    (bad,) = [q for q in report.quantaReports if q.status is ExecutionStatus.FAILURE]
    assert bad.exitCode == 21
    assert bad.exceptionInfo is not None and "InvalidQuantumError" in bad.exceptionInfo.className


@pytest.fixture(scope="module")
def graph_of_200(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """A 200-quantum graph (2 tasks x 100 detectors), written as a .qg file."""
    tmp = tmp_path_factory.mktemp("g200")
    _, qgraph = make_repo_and_graph(tmp / "repo", n_tasks=2, n_detectors=100)
    PredictedQuantumGraphComponents.from_old_quantum_graph(qgraph).write(str(tmp / "g.qg"))
    return tmp / "g.qg", qgraph


def test_the_broker_reads_only_the_thin_graph(
    graph_of_200: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a .qg file, and a reader that fails if asked for any quantum's datasets
    path, qgraph = graph_of_200

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the broker read quantum datasets")

    monkeypatch.setattr(PredictedQuantumGraphReader, "read_quantum_datasets", refuse)
    # When the broker reads what it schedules
    schedule, summary = read_schedule(path)
    # Then it has every quantum with its label, data id and edges
    full = PredictedQuantumGraph.from_old_quantum_graph(qgraph)
    xgraph = full.quantum_only_xgraph
    assert set(schedule.ids) == {str(q) for q in xgraph}
    for qid in list(xgraph)[:20]:
        node = xgraph.nodes[qid]
        q = schedule.quantum(str(qid))
        assert q.task_label == node["task_label"]
        assert q.data_id == dict(node["data_id"].required)
        assert q.task == "lsst.pipe.base.tests.simpleQGraph:AddTask"
    assert set(schedule.xgraph.edges) == {(str(a), str(b)) for a, b in xgraph.edges}
    assert {s.taskLabel: s.numQuanta for s in summary.qgraphTaskSummaries.values()} == {
        "task0": 100,
        "task1": 100,
    }


def test_an_executor_child_reads_one_quantum_at_a_time(graph_of_200: tuple[Path, Any]) -> None:
    # Given the graph file held open as an executor child holds it
    path, qgraph = graph_of_200
    full = PredictedQuantumGraph.from_old_quantum_graph(qgraph)
    expected = full.build_execution_quanta()
    graph_file = GraphFile(str(path))
    try:
        # When it builds each quantum by id
        for qid in list(expected)[::7]:
            task_node, built = graph_file.quantum(qid)
            # Then it is the quantum a whole read builds, and nothing stays held after it
            assert task_node.label == full.quantum_only_xgraph.nodes[qid]["task_label"]
            assert built.dataId == expected[qid].dataId
            assert {r.id for refs in built.outputs.values() for r in refs} == {
                r.id for refs in expected[qid].outputs.values() for r in refs
            }
            assert graph_file.held == 0
    finally:
        graph_file.close()


def test_zmpexec_lsst_run_writes_pipetask_summary_and_resumes(tmp_path: Path) -> None:
    _, qgraph = make_repo_and_graph(tmp_path / "repo", n_tasks=3, n_detectors=3)
    qgraph.saveUri(str(tmp_path / "g.qgraph"))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    argv = [
        sys.executable,
        "-m",
        "scripts.cli",
        "lsst",
        "run",
        "g.qgraph",
        "--butler",
        "repo",
        "-j",
        "2",
        "--summary",
        "s.json",
    ]
    out = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    report = Report.model_validate_json((tmp_path / "s.json").read_text())
    assert _statuses(report) == {"success": 9}
    butler = Butler.from_config(str(tmp_path / "repo"), collections="test")
    assert numpy.array_equal(butler.get("add_dataset3", instrument="INSTR", detector=2), INPUT + 9)
    # resume: everything exists, so everything is skipped as done
    again = subprocess.run(
        [*argv, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr
    assert _statuses(Report.model_validate_json((tmp_path / "s.json").read_text())) == {
        "success": 9
    }


def test_zmpexec_lsst_run_with_quantum_backed_butlers_registers_outputs(tmp_path: Path) -> None:
    _, qgraph = make_repo_and_graph(tmp_path / "repo", n_tasks=2, n_detectors=3)
    PredictedQuantumGraphComponents.from_old_quantum_graph(qgraph).write(str(tmp_path / "g.qg"))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    argv = [
        sys.executable,
        "-m",
        "scripts.cli",
        "lsst",
        "run",
        "g.qg",
        "--butler",
        "repo",
        "-j",
        "2",
        "--qbb",
        "--summary",
        "s.json",
    ]
    out = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "registered" in out.stderr
    assert _statuses(Report.model_validate_json((tmp_path / "s.json").read_text())) == {
        "success": 6
    }
    butler = Butler.from_config(str(tmp_path / "repo"), collections="test")
    assert numpy.array_equal(butler.get("add_dataset2", instrument="INSTR", detector=1), INPUT + 6)


def test_zmpexec_lsst_run_without_a_graph_file_is_a_one_line_error(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-m", "scripts.cli", "lsst", "run", "none.qgraph", "--butler", "repo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert "no quantum graph file" in out.stderr and "Traceback" not in out.stderr


def test_memory_and_cores_per_quantum_reach_tasks_and_a_memory_retry_raises_max_mem(
    tmp_path: Path,
) -> None:
    # Given task1 needs 600 MiB of ExecutionResources.max_mem (MemoryError below, as LSST's
    # mocks' memory_required), and a run giving 400 MiB and 2 cores a quantum, doubling on
    # a memory failure
    _, qgraph = make_repo_and_graph(
        tmp_path / "repo", n_tasks=3, n_detectors=2, flaky={"needs_mb": 600.0}
    )
    PredictedQuantumGraphComponents.from_old_quantum_graph(qgraph).write(str(tmp_path / "g.qg"))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    argv = [sys.executable, "-m", "scripts.cli", "lsst", "run", "g.qg", "--butler", "repo"]
    argv += ["-j", "2", "--qbb", "--summary", "s.json"]
    argv += ["--memory-per-quantum", "400", "--cores-per-quantum", "2"]
    argv += ["--memory-multiplier", "2", "--retries", "1"]
    # When it runs
    out = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    # Then task1's quanta failed for memory with 400 MiB, then ran with 800 MiB, with 2
    # cores
    assert out.returncode == 0, out.stderr
    assert _statuses(Report.model_validate_json((tmp_path / "s.json").read_text())) == {
        "success": 6
    }
    butler = Butler.from_config(str(tmp_path / "repo"), collections="test")
    for det in range(2):
        meta = butler.get("task1_metadata", instrument="INSTR", detector=det)
        assert meta["task1"]["maxMemMiB"] == 800.0
        assert meta["task1"]["numCores"] == 2


def test_task_metadata_on_a_warm_executor_gives_each_quantum_its_own_peak(
    tmp_path: Path,
) -> None:
    # Given a chain task0 -> task1 -> task2 where task1 allocates 300 MiB and frees it, run
    # by persistent workers (task2 after task1 on the same executor)
    _, qgraph = make_repo_and_graph(
        tmp_path / "repo",
        n_tasks=3,
        n_detectors=1,
        flaky={"alloc_detector": 0, "alloc_mb": 300},
    )
    ex = _executor(tmp_path / "repo", tmp_path)
    # When it runs
    ex.execute(qgraph)
    # Then LSST's metadata gives task1 its 300 MiB and task2, after it there, its own peak
    assert ex.zmpexec_report is not None
    ran_on = {r.taskLabel: d.worker for r, d in ex.zmpexec_report.entries()}
    assert ran_on["task1"] == ran_on["task2"]
    butler = Butler.from_config(str(tmp_path / "repo"), collections="test")
    mib = 2**20

    def rss(label: str, when: str) -> float:
        meta = butler.get(f"{label}_metadata", instrument="INSTR", detector=0)
        return float(meta["quantum"][f"{when}MaxResidentSetSize"]) / mib

    assert rss("task1", "end") - rss("task1", "prep") >= 280
    assert rss("task2", "end") < rss("task1", "end") - 250


def test_a_warm_executors_logs_stay_the_size_of_a_fresh_ones(tmp_path: Path) -> None:
    # Given 80 quanta run by two warm executors on quantum-backed butlers (LSST lists every
    # quantum its executor ran before into each one's log there)
    _, qgraph = make_repo_and_graph(tmp_path / "repo", n_tasks=2, n_detectors=40)
    ex = MPGraphExecutor(
        num_proc=2, timeout=120, qbb_repo=str(tmp_path / "repo"), run_dir=tmp_path / "run"
    )
    # When they run
    ex.execute(qgraph)
    # Then each log names at most the last few quanta run before it in its process, so the
    # logs of the last quanta are the size of the first ones'
    logs = sorted(
        (tmp_path / "repo" / "test").glob("task*_log/**/*.json"), key=lambda p: p.stat().st_mtime
    )
    assert len(logs) == 80
    listed = [len(_extra(p)["previous_process_quanta"]) for p in logs]
    assert max(listed) == KEPT_PREVIOUS_QUANTA  # (LSST still lists them: what we keep)
    first, last = logs[:10], logs[-10:]
    assert sum(p.stat().st_size for p in last) <= 1.2 * sum(p.stat().st_size for p in first)


def _extra(log: Path) -> dict[str, Any]:
    """What LSST stored beside a quantum's log records (its ``extra``)."""
    extra = ButlerLogRecords.from_file(str(log)).extra
    assert isinstance(extra, dict)
    return extra


def test_lsst_run_triage_counts_no_work_and_groups_failures(tmp_path: Path) -> None:
    # Given task1 finds no work on detector 1 (its child then has no inputs: no work either)
    # and fails on detector 2
    _, qgraph = make_repo_and_graph(
        tmp_path / "repo",
        n_tasks=3,
        n_detectors=4,
        flaky={"no_work_detector": 1, "fail_detector": 2},
    )
    qgraph.saveUri(str(tmp_path / "g.qgraph"))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    argv = [sys.executable, "-m", "scripts.cli", "lsst", "run", "g.qgraph", "--butler", "repo"]
    argv += ["-j", "2", "--run-dir", "run"]
    out = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr
    assert "zmpexec report run/report.json" in out.stderr
    # When the operator triages the run
    shown = subprocess.run(
        [sys.executable, "-m", "scripts.cli", "report", "run/report.json", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # Then no work found counts as success with its caveat, per task; the failure names its
    # task, exception, data id and log
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["tasks"]["task1"]["caveats"] == {"no_work": 1}
    assert data["tasks"]["task2"]["caveats"] == {"no_work": 1}
    assert data["tasks"]["task1"]["success"] == 3
    [failed] = data["failures"]
    assert (failed["task"], failed["exception"], failed["count"]) == ("task1", "RuntimeError", 1)
    assert failed["quanta"][0]["dataId"] == {"instrument": "INSTR", "detector": 2}
    assert failed["log"] is not None and Path(tmp_path, failed["log"]).exists()
    [skipped] = data["skipped"]
    assert (skipped["task"], skipped["cause"], skipped["count"]) == ("task2", "upstream_failure", 1)


PIPELINE_YAML = """description: two AddTasks
tasks:
  task0:
    class: lsst.pipe.base.tests.simpleQGraph.AddTask
    config:
      connections.in_tmpl: "0"
      connections.out_tmpl: "1"
  task1:
    class: lsst.pipe.base.tests.simpleQGraph.AddTask
    config:
      connections.in_tmpl: "1"
      connections.out_tmpl: "2"
"""


def _repository_state(root: Path) -> tuple[dict[str, Any], set[tuple[Any, ...]]]:
    """Every collection (type, chain) and every dataset (type, data id, run, id, stored)."""
    butler = Butler.from_config(str(root))
    collections: dict[str, Any] = {}
    for info in butler.collections.query_info("*"):
        collections[info.name] = (info.type.name, tuple(info.children))
    runs = [name for name, (kind, _) in collections.items() if kind == "RUN"]
    datasets = {
        (ref.datasetType.name, str(ref.dataId.required), ref.run, str(ref.id), butler.stored(ref))
        for ref in butler.registry.queryDatasets(..., collections=runs, findFirst=False)
    }
    return collections, datasets


def test_a_pipetask_run_script_leaves_the_same_repository_with_zmpexec(tmp_path: Path) -> None:
    # Given a graph built by pipetask qgraph (inputs in 'test', output chain 'out') and two
    # copies of its repository
    make_repo_and_graph(tmp_path / "repo", n_tasks=3, n_detectors=4)
    config = tmp_path / "repo" / "butler.yaml"  # (its registry by a path inside it, to copy)
    config.write_text(config.read_text().replace(str(tmp_path / "repo") + "/", "<butlerRoot>"))
    (tmp_path / "p.yaml").write_text(PIPELINE_YAML)
    pipetask = str(Path(sys.executable).parent / "pipetask")
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )

    qgraph = ["qgraph", "-b", "repo", "-p", "p.yaml", "-i", "test", "-o", "out"]
    built = run([pipetask, *qgraph, "--save-qgraph", "g.qg"])
    assert built.returncode == 0, built.stderr
    shutil.copytree(tmp_path / "repo", tmp_path / "a")
    shutil.copytree(tmp_path / "repo", tmp_path / "b")
    script = ["-g", "g.qg", "-i", "test", "-o", "out", "-j", "2", "--skip-existing-in", "out"]
    script += ["--clobber-outputs"]
    # When the script runs once with pipetask run and once with zmpexec lsst run
    theirs = run([pipetask, "run", "-b", "a", *script, "--summary", "a.json"])
    assert theirs.returncode == 0, theirs.stderr
    zmpexec = [sys.executable, "-m", "scripts.cli", "lsst", "run"]
    ours = run([*zmpexec, "-b", "b", *script, "--summary", "b.json"])
    assert ours.returncode == 0, ours.stderr
    # Then the repositories hold the same collections, chain and datasets, and the
    # summaries the same statuses
    collections, datasets = _repository_state(tmp_path / "a")
    assert collections["out"][0] == "CHAINED" and collections["out"][1][1:] == ("test",)
    assert len(datasets) > 30
    assert _repository_state(tmp_path / "b") == (collections, datasets)
    a, b = (Report.model_validate_json((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert _statuses(a) == _statuses(b) == {"success": 8}


def test_lsst_run_refuses_graph_building_options_and_runs_chosen_quanta(tmp_path: Path) -> None:
    _, qgraph = make_repo_and_graph(tmp_path / "repo", n_tasks=2, n_detectors=3)
    PredictedQuantumGraphComponents.from_old_quantum_graph(qgraph).write(str(tmp_path / "g.qg"))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    argv = [sys.executable, "-m", "scripts.cli", "lsst", "run", "-b", "repo", "-g", "g.qg"]

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*argv, *extra], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )

    # A graph-building option is one line saying where graphs are built
    refused = run("-p", "pipeline.yaml", "-c", "task0:x=1")
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "pipetask qgraph" in refused.stderr
    # --qgraph-node-id runs those quanta only (task0's, whose inputs exist), and
    # --log-level reaches the processes that run them (the logs LSST keeps)
    xgraph = PredictedQuantumGraph.from_old_quantum_graph(qgraph).quantum_only_xgraph
    chosen = [str(q) for q in xgraph if xgraph.nodes[q]["task_label"] == "task0"]
    quiet = "lsst.pipe.base.single_quantum_executor=WARNING"  # (it logs INFO per quantum)
    out = run(
        "--qgraph-node-id",
        ",".join(chosen[:2]),
        "--qgraph-node-id",
        chosen[2],
        "--summary",
        "s.json",
        "--log-level",
        quiet,
        "-j",
        "2",
    )
    assert out.returncode == 0, out.stderr
    report = Report.model_validate_json((tmp_path / "s.json").read_text())
    assert {str(q.quantumId) for q in report.quantaReports} == set(chosen)
    butler = Butler.from_config(str(tmp_path / "repo"), collections="test")
    log = butler.get("task0_log", instrument="INSTR", detector=0)
    assert log and not [r for r in log if r.name == "lsst.pipe.base.single_quantum_executor"]
    # --init-only writes the init-outputs and runs nothing
    again = run("--init-only", "--extend-run")
    assert again.returncode == 0, again.stderr
    assert "no quanta run" in again.stdout


@pytest.mark.parametrize("mode", ["direct", "qbb"])
def test_provenance_at_j2_reads_back_in_lsst_with_each_quantums_status(
    tmp_path: Path, mode: str
) -> None:
    # Given task1 fails on detector 2 (its child is blocked), finds no work on detector 3,
    # and needs more memory than the first attempt is given (a memory retry succeeds)
    _, qgraph = make_repo_and_graph(
        tmp_path / "repo",
        n_tasks=3,
        n_detectors=4,
        flaky={"fail_detector": 2, "no_work_detector": 3, "needs_mb": 600.0},
    )
    PredictedQuantumGraphComponents.from_old_quantum_graph(qgraph).write(str(tmp_path / "g.qg"))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    argv = [sys.executable, "-m", "scripts.cli", "lsst", "run", "g.qg", "-b", "repo", "-j", "2"]
    argv += ["--provenance", "p.qg", "--summary", "s.json", "--memory-per-quantum", "400"]
    argv += ["--memory-multiplier", "2", "--retries", "1", *(["--qbb"] if mode == "qbb" else [])]
    # When it runs at -j 2 with --provenance
    out = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr
    # Then LSST's reader gives every quantum the status the summary gives it
    summary = Report.model_validate_json((tmp_path / "s.json").read_text())
    expected = {
        ExecutionStatus.SUCCESS: QuantumAttemptStatus.SUCCESSFUL,
        ExecutionStatus.FAILURE: QuantumAttemptStatus.FAILED,
        ExecutionStatus.SKIPPED: QuantumAttemptStatus.BLOCKED,
    }
    with ProvenanceQuantumGraph.from_args(str(tmp_path / "p.qg")) as (graph, _):
        nodes = graph.quantum_only_xgraph.nodes
        assert len(nodes) == len(summary.quantaReports) == 12
        for q in summary.quantaReports:
            node = nodes[q.quantumId]
            assert node["status"] is expected[q.status], (q.taskLabel, q.dataId)
            # (a failure's usage comes from its log, which LSST's direct-butler log drops)
            failed = q.status is ExecutionStatus.FAILURE
            if q.status is ExecutionStatus.SUCCESS or (mode == "qbb" and failed):
                assert node["resource_usage"].memory > 0, (q.taskLabel, q.dataId)
        by_data = {(n["task_label"], n["data_id"]["detector"]): n for n in nodes.values()}
    assert by_data["task1", 2]["exception"].type_name == "RuntimeError"
    assert by_data["task1", 3]["caveats"] & QuantumSuccessCaveats.NO_WORK
    if mode == "qbb":  # (and earlier attempts: see the README)
        statuses = [a.status for a in by_data["task1", 0]["attempts"]]
        assert statuses == [QuantumAttemptStatus.FAILED, QuantumAttemptStatus.SUCCESSFUL]


def test_the_drop_in_writes_provenance_with_several_processes(tmp_path: Path) -> None:
    # Given LSST's executor interface with 3 processes (LSST's own raises
    # NotImplementedError for provenance there)
    _, qgraph = make_repo_and_graph(tmp_path / "repo", n_tasks=2, n_detectors=3)
    ex = _executor(tmp_path / "repo", tmp_path)
    # When it runs with a provenance graph file
    ex.execute(qgraph, provenance_graph_file=str(tmp_path / "p.qg"))
    # Then the file holds every quantum, successful, with its resource usage
    with ProvenanceQuantumGraph.from_args(str(tmp_path / "p.qg")) as (graph, _):
        nodes = graph.quantum_only_xgraph.nodes
        assert len(nodes) == 6
        assert {n["status"] for n in nodes.values()} == {QuantumAttemptStatus.SUCCESSFUL}
        assert all(n["resource_usage"].memory > 0 for n in nodes.values())
