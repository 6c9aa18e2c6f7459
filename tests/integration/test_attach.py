"""Brokers serving graphs to attached workers, control requests, logs, timelines, scripts."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker import MPGraphExecutor
from common.butler import Butler
from common.graph import QuantumGraph
from common.keys import create_keys
from common.report import ExecutionStatus, Reason, Report
from tests.conftest import Background, wait_until
from tests.graphs import independent, quantum

ROOT = Path(__file__).resolve().parents[2]
ENV = {"PYTHONPATH": str(ROOT), "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}


class Procs:
    """Processes a test starts; all killed and reaped in teardown."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.started: list[subprocess.Popen[str]] = []

    def zmpexec(self, *args: str) -> subprocess.Popen[str]:
        p = subprocess.Popen(
            [sys.executable, "-m", "scripts.cli", *args],
            cwd=self.cwd,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.started.append(p)
        return p

    def finish(self, p: subprocess.Popen[str], timeout_s: float = 60) -> tuple[int, str, str]:
        out, err = p.communicate(timeout=timeout_s)
        return p.returncode, out, err


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    ps = Procs(tmp_path)
    yield ps
    for p in ps.started:
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=30)


def _ipc(tmp_path: Path) -> str:
    return f"ipc://{tmp_path}/b.sock"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_worker_started_before_the_broker_waits_joins_and_exits_with_the_run(
    tmp_path: Path, procs: Procs
) -> None:
    independent(6, "sleep", seconds=0.1).save(tmp_path / "g.json")
    endpoint = _ipc(tmp_path)
    # Given a worker waiting for a broker that is not up yet
    worker = procs.zmpexec("worker", "--connect", endpoint, "-j", "2", "--wait", "30")
    # When the broker starts with no local workers
    broker = procs.zmpexec("broker", "g.json", "--endpoint", endpoint, "--summary", "s.json")
    # Then the run completes on the attached workers, and both commands exit cleanly
    code, _, err = procs.finish(broker)
    assert code == 0, err
    wcode, _, werr = procs.finish(worker)
    assert wcode == 0, werr
    report = Report.from_json((tmp_path / "s.json").read_text())
    assert report.counts()[ExecutionStatus.SUCCESS] == 6
    assert all(not d.worker or d.worker.startswith("w") for d in report.quantaDetails.values())


def test_tcp_broker_accepts_only_workers_with_its_keys(tmp_path: Path, procs: Procs) -> None:
    independent(8, "sleep", seconds=0.1).save(tmp_path / "g.json")
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    run_dir = tmp_path / "zmpexec-repo" / "runs" / "main"
    broker = procs.zmpexec("broker", "g.json", "--endpoint", endpoint, "--summary", "s.json")
    wait_until(lambda: (run_dir / "endpoint").exists(), 30, "the broker to record its endpoint")
    keys = run_dir / "curve"
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in keys.rglob("*.key*"))
    # Given an intruder with keys the broker never listed
    create_keys(tmp_path / "other")
    intruder = procs.zmpexec(
        "worker", "--connect", endpoint, "--keys", str(tmp_path / "other"), "--wait", "3"
    )
    # When a worker with the run's keys attaches
    worker = procs.zmpexec("worker", "--run-dir", str(run_dir), "-j", "1")
    # Then the run completes on that worker alone, and the intruder got nothing
    code, _, err = procs.finish(broker)
    assert code == 0, err
    assert procs.finish(worker)[0] == 0
    icode, _, ierr = procs.finish(intruder)
    assert icode == 1 and "found no broker" in ierr
    report = Report.from_json((tmp_path / "s.json").read_text())
    assert {d.worker for d in report.quantaDetails.values()} == {"w1"}


def test_status_and_cancel_of_a_running_broker(tmp_path: Path, procs: Procs) -> None:
    # 20 quanta of 1 s on 2 workers: the cancel (after two status calls) comes well before the
    # last ones are taken, even on a loaded machine
    independent(20, "sleep", seconds=1.0).save(tmp_path / "g.json")
    run_dir = tmp_path / "zmpexec-repo" / "runs" / "main"
    broker = procs.zmpexec(
        "broker",
        "g.json",
        "--endpoint",
        _ipc(tmp_path),
        "-j",
        "2",
        "--summary",
        "s.json",
        "--grace",
        "10",
    )
    wait_until(lambda: (run_dir / "endpoint").exists(), 30, "the broker to record its endpoint")

    def running() -> bool:
        argv = [sys.executable, "-m", "scripts.cli", "status", str(run_dir), "--json"]
        out = subprocess.run(argv, cwd=tmp_path, env=ENV, capture_output=True, text=True)
        return out.returncode == 0 and len(json.loads(out.stdout)["running"]) >= 2

    wait_until(running, 30, "two quanta to run")
    # status, as a table
    code, out, err = procs.finish(procs.zmpexec("status", str(run_dir)))
    assert code == 0, err
    assert "sleep" in out and "workers alive: 2" in out and "throughput" in out
    # When the run is cancelled (drain)
    code, out, err = procs.finish(procs.zmpexec("cancel", str(run_dir)))
    assert code == 0 and "draining" in out, err
    # Then running quanta finish, the rest is cancelled, and the broker exits
    code, _, err = procs.finish(broker)
    assert code == 1, err
    report = Report.from_json((tmp_path / "s.json").read_text())
    done = report.counts()[ExecutionStatus.SUCCESS]
    assert 2 <= done < 20
    assert all(
        d.reason is Reason.CANCELLED for d in report.quantaDetails.values() if d.reason is not None
    )
    assert not (run_dir / "endpoint").exists()


def test_status_without_a_broker_is_a_clear_error(tmp_path: Path, procs: Procs) -> None:
    code, _, err = procs.finish(procs.zmpexec("status", str(tmp_path)))
    assert code == 2 and "no running broker recorded" in err


def test_logs_and_timeline_of_a_finished_run(tmp_path: Path, procs: Procs) -> None:
    graph = QuantumGraph.from_quanta(
        [quantum("chat", "chatty", config={"text": "hello there"})]
        + [
            quantum(f"s{i}", "sleep", label=f"step{i % 3}", config={"seconds": 0.05})
            for i in range(12)
        ]
    )
    graph.save(tmp_path / "g.json")
    assert procs.finish(procs.zmpexec("run", "g.json", "-j", "3", "--summary", "s.json"))[0] == 0
    code, out, _ = procs.finish(procs.zmpexec("logs", "chat"))
    assert code == 0 and "stdout: hello there" in out and "subprocess: hello there" in out
    code, _, err = procs.finish(procs.zmpexec("logs", "s1"))
    assert code == 2 and "no log for quantum 's1'" in err
    for name in ("t.png", "t.html"):
        code, out, err = procs.finish(procs.zmpexec("report", "s.json", "--timeline", name))
        assert code == 0, err
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in (tmp_path / "t.html").read_text()


def test_custom_executor_reaches_attached_workers(tmp_path: Path, procs: Procs) -> None:
    from tests.executors import TaggingExecutor

    butler = Butler(tmp_path / "repo")
    graph = independent(5)
    endpoint = _ipc(tmp_path)
    ex = MPGraphExecutor(
        1,
        30.0,
        TaggingExecutor("custom"),
        endpoint=endpoint,
        local_workers=0,
        run_dir=tmp_path / "run",
    )
    run = Background(ex, graph, butler)
    worker = procs.zmpexec("worker", "--connect", endpoint)
    assert run.join() is None
    wcode, _, werr = procs.finish(worker)
    assert wcode == 0, werr
    values = [butler.get(f"q{i}") for i in range(5)]
    assert all(v.startswith(f"custom q{i} ") for i, v in enumerate(values))
    assert all(int(v.split()[2]) != os.getpid() for v in values)


def test_two_terminal_script_runs_the_example(tmp_path: Path) -> None:
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = dict(ENV, TMPDIR=str(tmp_path))
    out = subprocess.run(
        [str(ROOT / "scripts" / "two-terminals.sh"), "examples/pipeline.yaml", "2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "2 worker(s) attaching" in out.stderr
    assert "status: success; 79 success" in out.stdout
