"""Worker agents killed or stopped mid-quantum: seen, replaced, their quanta re-dispatched."""

from __future__ import annotations

import os
import signal
import sys
import time

import psutil
import pytest

from broker import MPGraphExecutor, MPGraphExecutorError
from broker.transport import pool
from common.butler import Butler
from common.report import ExecutionStatus, Reason
from scripts.bench.procs import gone, worker_agents
from tests.conftest import Background, wait_until
from tests.graphs import independent
from worker.executor import TaskQuantumExecutor


def _both_busy(log_dirs: list[str]) -> bool:
    agents = worker_agents()
    return len(agents) == 2 and all(_running_in(a, log_dirs) for a in agents)


def _running_in(agent: psutil.Process, log_dirs: list[str]) -> bool:
    """True when the agent's executor child is running a quantum (its capture file exists)."""
    try:
        children = agent.children(recursive=True)
    except psutil.Error:
        return False
    return any(
        os.path.exists(os.path.join(d, f".capture-{c.pid}")) for c in children for d in log_dirs
    )


@pytest.mark.parametrize("retries", [1, 0])
def test_sigkilled_worker_is_seen_and_its_quantum_retried_or_failed(
    butler: Butler, tmp_path: object, retries: int
) -> None:
    run_dir = os.path.join(str(tmp_path), "run")
    log_dirs = [os.path.join(run_dir, "logs")]
    ex = MPGraphExecutor(
        2, 30.0, TaskQuantumExecutor(), run_dir=run_dir, retries=retries, prefetch=0
    )
    run = Background(ex, independent(4, "sleep", seconds=1.0), butler)
    # Given both workers running a quantum
    wait_until(lambda: _both_busy(log_dirs), 30, "both workers to run a quantum")
    victim = worker_agents()[0]
    # When one agent is SIGKILLed mid-quantum
    t0 = time.monotonic()
    victim.kill()
    error = run.join()
    # Then the run finishes: its quantum ran again elsewhere, or failed as worker_lost
    report = ex.getReport()
    lost = [d for d in report.quantaDetails.values() if d.attempts == 2 or d.reason]
    assert len(lost) == 1
    if retries:
        assert error is None
        assert lost[0].attempts == 2
        assert report.counts()[ExecutionStatus.SUCCESS] == 4
    else:
        assert error is not None
        assert lost[0].reason is Reason.WORKER_LOST
        assert "SIGKILL" in (lost[0].message or "")
        assert report.counts()[ExecutionStatus.SUCCESS] == 3
    # a replacement worker was started for the lost one
    assert ex.timings is not None and ex.timings.workers_started == 3
    assert time.monotonic() - t0 < 30


def test_stopped_worker_is_lost_by_heartbeat_and_killed(butler: Butler, tmp_path: object) -> None:
    run_dir = os.path.join(str(tmp_path), "run")
    log_dirs = [os.path.join(run_dir, "logs")]
    ex = MPGraphExecutor(
        2,
        30.0,
        TaskQuantumExecutor(),
        run_dir=run_dir,
        heartbeat_interval_s=0.2,
        liveness=3,
        prefetch=0,
    )
    run = Background(ex, independent(4, "sleep", seconds=1.0), butler)
    wait_until(lambda: _both_busy(log_dirs), 30, "both workers to run a quantum")
    victim = worker_agents()[0]
    # When an agent is stopped (it cannot answer heartbeats)
    victim.send_signal(signal.SIGSTOP)
    error = run.join()
    # Then it was declared lost, killed, and its quantum re-dispatched
    assert error is None
    report = ex.getReport()
    assert report.counts()[ExecutionStatus.SUCCESS] == 4
    assert sorted(d.attempts for d in report.quantaDetails.values()) == [1, 1, 1, 2]
    wait_until(lambda: gone(victim), 5, "the stopped worker to be killed")


def test_workers_that_die_before_registering_end_the_run_with_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, butler: Butler
) -> None:
    # Given local workers that exit at once, every time (a broken install, say); each
    # replacement may reuse the file descriptor number of the one it replaces
    monkeypatch.setattr(
        pool, "agent_command", lambda config: [sys.executable, "-c", "raise SystemExit(3)"]
    )
    ex = MPGraphExecutor(2, 30.0, TaskQuantumExecutor())
    # Then the run ends after the failed starts in a row, saying why (it used to wait forever
    # for a replacement whose exit it never saw)
    error = Background(ex, independent(4), butler).join(60.0)
    assert isinstance(error, MPGraphExecutorError)
    assert "no workers" in str(error) and "exited with code 3" in str(error)
