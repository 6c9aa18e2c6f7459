"""A short kill storm with real processes (``scripts/bench/storm.py``): workers' agents and executor
children SIGKILLed and agents SIGSTOPped at random, the broker SIGKILLed at 40 % and the run
resumed under the same storm, then a calm resume if needed."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from scripts.bench.storm import Storm, run_storm


@pytest.mark.timeout(400)
def test_a_run_under_a_kill_storm_ends_and_loses_nothing() -> None:
    # Given 2,000 quanta in chains, 3 workers with a 1 s liveness window, a hit every
    # 0.3-0.7 s and the broker killed at 40 %
    storm = Storm(
        quanta=2000,
        seconds=0.01,
        jobs=3,
        heartbeat_s=0.2,
        liveness=5,
        startup_timeout_s=10.0,
        seed=7,
        run_limit_s=120.0,
    )
    with tempfile.TemporaryDirectory(prefix="zs", dir="/tmp") as tmp:
        out = run_storm(storm, Path(tmp))
        log = (Path(tmp) / "broker.log").read_text(errors="replace")
    # Then every run ended, and the last one succeeded
    assert out.ended, f"a run hung: {out.runs}\n{log[-4000:]}"
    assert out.runs[0][1] < 0, "the broker was not killed mid-run"
    assert out.runs[-1][1] == 0, f"{out.runs}\n{log[-4000:]}"
    assert sum(out.hits.values()) >= 5, out.hits
    # and nothing was lost, nothing finished before the broker's kill ran again after it,
    # and every process a run started was gone when it ended
    assert out.missing == 0
    assert out.redone == 0
    assert out.left_running == []
    # (a quantum may run again only where its attempt's result was lost with its worker)
    assert out.rerun <= sum(out.hits.values())
    # and each stopped agent was killed by its broker within its liveness window (1 s) once
    # it was up, within the start-up timeout (10 s) while it was starting, plus some slack
    # (slack for a loaded machine: the broker's wake-up, the kill, the reap, this poll)
    assert all(s < 1.0 + 4.0 for s in out.stop_detect_s), out.stop_detect_s
    assert all(s < storm.startup_timeout_s + 5.0 for s in out.stop_starting_s), out
