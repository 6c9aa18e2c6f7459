"""The ``zmpexec`` command end to end: real processes, exit codes, one-line errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from array import array
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from common.graph import QuantumGraph
from common.report import Report
from tests.conftest import wait_until
from tests.graphs import independent, quantum

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "pipeline.yaml"


def zmpexec(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scripts.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )


@pytest.fixture
def popen(tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=30)


def test_run_example_succeeds_and_stores_outputs(tmp_path: Path) -> None:
    out = zmpexec(
        "run", str(EXAMPLE), "-j", "2", "--repo", "repo", "--summary", "s.json", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    report = Report.from_json((tmp_path / "s.json").read_text())
    assert report.counts()[report.status] == len(QuantumGraph.load(EXAMPLE))
    assert (tmp_path / "repo" / "registry.sqlite3").exists()
    rendered = zmpexec("report", "s.json", cwd=tmp_path)
    assert rendered.returncode == 0
    assert "status: success" in rendered.stdout and "measure" in rendered.stdout


def test_validate_accepts_the_example(tmp_path: Path) -> None:
    out = zmpexec("validate", str(EXAMPLE), cwd=tmp_path)
    assert out.returncode == 0
    assert "valid, 79 quanta" in out.stdout
    assert "reading" not in out.stderr  # a small graph loads without progress lines


def test_a_big_graph_reports_progress_while_it_loads(tmp_path: Path) -> None:
    from examples.pipeline import make_graph

    (tmp_path / "big.json").write_text(json.dumps(make_graph(60, 40), indent=1))
    out = zmpexec("validate", "big.json", cwd=tmp_path)
    assert out.returncode == 0
    assert "reading big.json (" in out.stderr
    assert "read 7,261 quanta in " in out.stderr and "valid (" in out.stderr


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("quanta: [", "not valid yaml"),
        ("quanta:\n- {id: a, task: 'no_such_pkg_q:run'}", "no_such_pkg_q"),
        (
            "quanta:\n- {id: a, task: 'tests.tasks:ok', inputs: [b], outputs: [a]}\n"
            "- {id: b, task: 'tests.tasks:ok', inputs: [a], outputs: [b]}",
            "cycle: ",
        ),
    ],
)
@pytest.mark.parametrize("command", ["validate", "run"])
def test_bad_graphs_exit_2_with_one_line(
    tmp_path: Path, command: str, text: str, fragment: str
) -> None:
    (tmp_path / "g.yaml").write_text(text)
    out = zmpexec(command, "g.yaml", cwd=tmp_path)
    assert out.returncode == 2
    assert fragment in out.stderr
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def _binary_graph_with(tmp_path: Path, change: str) -> Path:
    """A .zmpg file of a 3-chain (c0 -> c1 -> c2), damaged as ``change`` says."""
    import msgpack

    from common import graphfile
    from tests.graphs import chain

    path = tmp_path / "g.zmpg"
    cols = graphfile._columns(chain(3))
    if change == "cycle":  # c2 -> c0 as well: offsets of 3 edges, depths that prove nothing
        cols["succ_ptr"] = array("q", [0, 1, 2, 3]).tobytes()
        cols["succ"] = array("i", [1, 2, 0]).tobytes()
    elif change == "duplicate id":
        cols["ids"] = ["c0", "c1", "c0"]
    elif change == "wrong version":
        cols["version"] = 99
    data = graphfile.MAGIC + msgpack.packb(cols, use_bin_type=True)
    if change == "truncated":
        data = data[: len(data) // 2]
    elif change == "not ours":
        data = b"PK\x03\x04" + data
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ("none", "valid, 3 quanta, 2 edges"),
        ("cycle", "has a cycle: c1 -> c2 -> c0 -> c1"),
        ("duplicate id", "duplicate quantum ids: 'c0'"),
        ("wrong version", "format version 99; this zmpexec reads versions 1 to 2"),
        ("truncated", "is truncated or corrupt"),
        ("not ours", "is not a zmpexec binary graph"),
    ],
)
def test_binary_graph_files_are_checked_when_read(
    tmp_path: Path, change: str, fragment: str
) -> None:
    _binary_graph_with(tmp_path, change)
    out = zmpexec("validate", "g.zmpg", cwd=tmp_path)
    if change == "none":
        assert out.returncode == 0 and fragment in out.stdout
        return
    assert out.returncode == 2
    assert fragment in out.stderr and "g.zmpg" in out.stderr
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_convert_writes_a_binary_graph_that_runs_like_the_yaml(tmp_path: Path) -> None:
    out = zmpexec("convert", str(EXAMPLE), "g.zmpg", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "g.zmpg: 79 quanta" in out.stdout
    assert QuantumGraph.load(tmp_path / "g.zmpg").quanta() == QuantumGraph.load(EXAMPLE).quanta()
    back = zmpexec("convert", "g.zmpg", "back.json", cwd=tmp_path)
    assert back.returncode == 0
    assert QuantumGraph.load(tmp_path / "back.json").quanta() == QuantumGraph.load(EXAMPLE).quanta()
    bad = zmpexec("convert", "g.zmpg", "out.txt", cwd=tmp_path)
    assert bad.returncode == 2 and "unknown suffix" in bad.stderr


def test_failed_quanta_exit_1_and_bad_report_file_exits_2(tmp_path: Path) -> None:
    graph = QuantumGraph.from_quanta(
        [quantum("a"), quantum("bad", "fail"), quantum("after", inputs=["bad"])]
    )
    graph.save(tmp_path / "g.json")
    out = zmpexec("run", "g.json", "-j", "2", "--summary", "s.json", cwd=tmp_path)
    assert out.returncode == 1
    assert "1 failure" in out.stderr
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["status"] == "failure"
    shown = zmpexec("report", "s.json", cwd=tmp_path).stdout
    assert "bad [fail] failure (exception)" in shown
    assert "after [ok] skipped, blocked by bad" in shown
    assert "a [ok]" not in shown
    every = zmpexec("report", "s.json", "--all", cwd=tmp_path).stdout
    assert "a [ok] success" in every
    (tmp_path / "junk.json").write_text("[1, 2]")
    bad = zmpexec("report", "junk.json", cwd=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_cancels_the_run_writes_the_summary_and_exits(
    tmp_path: Path, popen: list[subprocess.Popen[str]], sig: int, code: int
) -> None:
    # Given a run of slow quanta
    independent(6, "sleep", seconds=30).save(tmp_path / "g.json")
    proc = subprocess.Popen(
        [sys.executable, "-m", "scripts.cli", "run", "g.json", "-j", "2", "--summary", "s.json"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    popen.append(proc)
    logs = tmp_path / "zmpexec-repo" / "runs"
    wait_until(lambda: any(logs.glob("*/logs/.capture-*")), 30, "quanta to start running")
    endpoint = (logs / "main" / "endpoint").read_text().strip()
    sock_dir = Path(endpoint.removeprefix("ipc://")).parent
    assert sock_dir.is_dir() and oct(sock_dir.stat().st_mode & 0o777) == "0o700"
    # When it is signalled
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    # Then it cancels, writes the summary and exits with the signal's code
    assert proc.returncode == code, err
    report = Report.from_json((tmp_path / "s.json").read_text())
    assert all(
        d.reason is not None and d.reason.value == "cancelled"
        for d in report.quantaDetails.values()
    )
    assert not sock_dir.exists()  # its private socket directory is removed


def test_killing_the_run_leaves_no_process_behind(
    tmp_path: Path, popen: list[subprocess.Popen[str]]
) -> None:
    # Given a run whose quanta are sleeping in their executor children
    independent(4, "sleep", seconds=60).save(tmp_path / "g.json")
    proc = subprocess.Popen(
        [sys.executable, "-m", "scripts.cli", "run", "g.json", "-j", "2"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    popen.append(proc)
    logs = tmp_path / "zmpexec-repo" / "runs"
    wait_until(lambda: len(list(logs.glob("*/logs/.capture-*"))) >= 2, 30, "quanta to run")
    family = psutil.Process(proc.pid).children(recursive=True)
    assert len(family) >= 6  # 2 agents, 2 forkservers, 2 executor children
    # When the run is SIGKILLed (no chance to clean up)
    proc.kill()
    proc.communicate(timeout=10)

    # Then every process it started is gone within a second or two
    def alive(p: psutil.Process) -> bool:
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def all_gone() -> bool:
        return not any(alive(p) for p in family)

    wait_until(all_gone, 3, "the run's processes to exit")
