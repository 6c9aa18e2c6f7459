"""LSST executor scenarios on our API, in-process and with real worker processes over ipc."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import sqlite3
import time
from pathlib import Path

import networkx as nx
import psutil
import pytest

from broker import MPGraphExecutor, MPGraphExecutorError, MPTimeoutError
from common.butler import Butler
from common.graph import QuantumGraph
from common.report import ExecutionStatus, Reason, Report
from common.status import RunStatus
from tests.conftest import Background, wait_until
from tests.graphs import independent, quantum
from worker.executor import TaskQuantumExecutor

MODES = [pytest.param(1, id="in-process"), pytest.param(3, id="3-workers")]


def make(num_proc: int, timeout: float | None = 30.0, **kw: object) -> MPGraphExecutor:
    """A timeout only where it is enforced (numProc >= 2); in-process runs take none."""
    timeout = None if num_proc == 1 else timeout
    return MPGraphExecutor(num_proc, timeout, TaskQuantumExecutor(), **kw)  # type: ignore[arg-type]


def test_a_timeout_with_one_process_warns_that_it_is_not_enforced() -> None:
    with pytest.warns(RuntimeWarning, match="not enforced with numProc == 1"):
        MPGraphExecutor(1, 5.0, TaskQuantumExecutor())


@pytest.mark.parametrize("num_proc", MODES)
def test_all_quanta_succeed_and_outputs_are_stored(num_proc: int, butler: Butler) -> None:
    graph = independent(4, "add", value=5)
    ex = make(num_proc)
    ex.execute(graph, butler)
    report = ex.getReport()
    assert report.status is ExecutionStatus.SUCCESS
    assert report.counts()[ExecutionStatus.SUCCESS] == 4
    expected_exit = None if num_proc == 1 else 0
    assert all(r.exitCode == expected_exit for r in report.quantaReports)
    assert [butler.get(f"q{i}") for i in range(4)] == [5, 5, 5, 5]
    assert report.taskCounts == {"add": 4}


def test_executor_children_run_single_threaded_libraries_unless_told_otherwise(
    butler: Butler, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers on two cores must not each start a BLAS thread per core (an OpenBLAS pool
    spins beside the task): thread counts default to 1; a count the user set is kept."""
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    names = ["OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"]
    make(2).execute(independent(2, "thread_env", names=names), butler)
    seen = {"OMP_NUM_THREADS": "3", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    assert [butler.get(f"q{i}") for i in range(2)] == [seen, seen]


@pytest.mark.parametrize("num_proc", MODES)
def test_one_failure_of_four_raises_and_is_reported(num_proc: int, butler: Butler) -> None:
    graph = QuantumGraph.from_quanta(
        [quantum(f"q{i}") for i in range(3)] + [quantum("bad", "fail", config={"message": "boom"})]
    )
    ex = make(num_proc)
    with pytest.raises(MPGraphExecutorError, match="boom") as info:
        ex.execute(graph, butler)
    assert not isinstance(info.value, MPTimeoutError)
    report = ex.getReport()
    assert report.status is ExecutionStatus.FAILURE
    assert report.counts()[ExecutionStatus.FAILURE] == 1
    assert report.counts()[ExecutionStatus.SUCCESS] == 3
    bad = report.report_for("bad")
    assert bad.exceptionInfo is not None
    assert bad.exceptionInfo.className == "ValueError"
    assert bad.exceptionInfo.message == "boom"
    assert bad.exitCode == (None if num_proc == 1 else 1)
    log = report.details("bad").logPath
    assert log is not None and "ValueError: boom" in Path(log).read_text()


def _per_detector_graph(bad_detector: int) -> QuantumGraph:
    qs = []
    for det in range(4):
        qs.append(
            quantum(
                f"a{det}",
                "fail_if",
                label="a",
                data_id={"detector": det},
                config={"detector": det, "fail_on": bad_detector},
            )
        )
        qs.append(
            quantum(f"b{det}", "ok", label="b", data_id={"detector": det}, inputs=[f"a{det}"])
        )
    return QuantumGraph.from_quanta(qs)


@pytest.mark.parametrize("num_proc", MODES)
def test_failed_quantum_skips_only_its_descendants(num_proc: int, butler: Butler) -> None:
    ex = make(num_proc)
    with pytest.raises(MPGraphExecutorError):
        ex.execute(_per_detector_graph(bad_detector=2), butler)
    report = ex.getReport()
    counts = report.counts()
    assert (
        counts[ExecutionStatus.FAILURE],
        counts[ExecutionStatus.SUCCESS],
        counts[ExecutionStatus.SKIPPED],
    ) == (1, 6, 1)
    assert report.report_for("a2").status is ExecutionStatus.FAILURE
    assert report.report_for("b2").status is ExecutionStatus.SKIPPED
    assert report.report_for("b2").exitCode is None
    details = report.details("b2")
    assert details.blockedBy == ("a2",)
    assert details.reason is Reason.UPSTREAM_FAILURE


@pytest.mark.parametrize("num_proc", MODES)
def test_fail_fast_stops_at_once_and_reports_every_quantum(num_proc: int, butler: Butler) -> None:
    # Given a failure next to slow quanta and a long queue behind them
    qs = [quantum("bad", "fail")] + [
        quantum(f"slow{i}", "sleep", config={"seconds": 30}) for i in range(6)
    ]
    ex = make(num_proc, failFast=True)
    t0 = time.monotonic()
    # When it runs with fail-fast
    with pytest.raises(MPGraphExecutorError):
        ex.execute(QuantumGraph.from_quanta(qs), butler)
    # Then it stops promptly, killing running quanta, and every quantum is in the report
    assert time.monotonic() - t0 < 15
    report = ex.getReport()
    assert len(report.quantaReports) == 7
    assert report.report_for("bad").status is ExecutionStatus.FAILURE
    for i in range(6):
        assert report.report_for(f"slow{i}").status is ExecutionStatus.SKIPPED
        assert report.details(f"slow{i}").reason is Reason.CANCELLED


def test_fail_fast_propagates_the_exit_code(butler: Butler) -> None:
    qs = [quantum("exit7", "exit_hard", config={"code": 7})] + [
        quantum(f"slow{i}", "sleep", config={"seconds": 30}) for i in range(2)
    ]
    ex = make(3, failFast=True)
    with pytest.raises(MPGraphExecutorError, match="exited with code 7"):
        ex.execute(QuantumGraph.from_quanta(qs), butler)
    report = ex.getReport()
    assert report.report_for("exit7").exitCode == 7
    assert report.exitCode == 7


@pytest.mark.parametrize("sig", [signal.SIGILL, signal.SIGSEGV])
def test_crash_by_signal_reports_negative_exit_code(sig: int, butler: Butler) -> None:
    graph = QuantumGraph.from_quanta(
        [quantum("crash", "crash", config={"sig": int(sig)})] + [quantum(f"q{i}") for i in range(3)]
    )
    ex = make(3)
    with pytest.raises(MPGraphExecutorError, match=signal.Signals(sig).name):
        ex.execute(graph, butler)
    report = ex.getReport()
    crash = report.report_for("crash")
    assert crash.status is ExecutionStatus.FAILURE
    assert crash.exitCode == -sig
    assert crash.exceptionInfo is None
    details = report.details("crash")
    assert details.reason is Reason.SIGNAL
    assert details.message is not None and signal.Signals(sig).name in details.message
    assert report.counts()[ExecutionStatus.SUCCESS] == 3


@pytest.mark.parametrize("fail_fast", [False, True])
def test_timeout_kills_the_task_and_its_children(
    fail_fast: bool, butler: Butler, tmp_path: Path
) -> None:
    pid_file = tmp_path / "grandchild.pid"
    qs = [quantum("hang", "hang_with_grandchild", config={"pid_file": str(pid_file)})]
    qs += [quantum(f"q{i}") for i in range(3)]
    ex = make(3, timeout=1.0, failFast=fail_fast)
    t0 = time.monotonic()
    with pytest.raises(MPTimeoutError):
        ex.execute(QuantumGraph.from_quanta(qs), butler)
    assert time.monotonic() - t0 < 10
    report = ex.getReport()
    assert report.status is ExecutionStatus.TIMEOUT
    assert report.report_for("hang").status is ExecutionStatus.TIMEOUT
    assert report.details("hang").reason is Reason.TIMEOUT
    grandchild = int(pid_file.read_text())
    log = report.details("hang").logPath  # what it wrote before it was killed is kept
    assert log is not None and f"started grandchild {grandchild}" in Path(log).read_text()
    wait_until(
        lambda: (
            not psutil.pid_exists(grandchild)
            or psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE
        ),
        5,
        "the hung task's grandchild to die",
    )
    if not fail_fast:
        assert report.counts()[ExecutionStatus.SUCCESS] == 3


@pytest.mark.parametrize(
    ("task", "config", "late_s"),
    [("hold_gil", {"seconds": 60.0}, 0.5), ("hang_ignoring_alarm", {}, 1.5)],
    ids=["holds-the-gil", "takes-sigalrm-over"],
)
def test_timeout_ends_a_task_whatever_it_does(
    task: str, config: dict[str, object], late_s: float, butler: Butler
) -> None:
    # Given a quantum that never ends on its own, a 1 s timeout, and quanta beside it
    qs = [quantum("stuck", task, config=config)]
    qs += [quantum(f"after{i}", "nap", config={"seconds": 0.2}) for i in range(4)]
    ex = make(2, timeout=1.0)
    # When it runs holding the GIL in C code (the executor's own alarm ends it), or ignoring
    # SIGALRM (its agent, which reads what it runs, kills it within a heartbeat interval)
    with pytest.raises(MPTimeoutError):
        ex.execute(QuantumGraph.from_quanta(qs), butler)
    # Then it timed out soon after its deadline, and the rest ran
    report = ex.getReport()
    details = report.details("stuck")
    assert details.reason is Reason.TIMEOUT
    assert details.endTime is not None and details.startTime is not None
    assert 1.0 <= details.endTime - details.startTime < 1.0 + late_s
    assert report.counts()[ExecutionStatus.SUCCESS] == 4


def _agents() -> list[psutil.Process]:
    return [
        p
        for p in psutil.Process().children()
        if any("worker.agent" in part for part in p.cmdline())
    ]


def test_the_agent_is_not_woken_per_quantum(butler: Butler) -> None:
    # Given two workers running 400 quanta of 5 ms, a second and more of work each
    graph = independent(400, "nap", seconds=0.005)
    ex = make(2, prefetch=1)
    run = Background(ex, graph, butler)
    wait_until(lambda: len(_agents()) == 2, 30, "two agents")
    agents = _agents()
    first = {a.pid: a.num_ctx_switches().voluntary for a in agents}
    t0, last = time.monotonic(), dict(first)
    # When the quanta run, sampled until the agents are gone
    while _alive(agents):
        for a in agents:
            with contextlib.suppress(psutil.Error):
                last[a.pid] = a.num_ctx_switches().voluntary
        time.sleep(0.02)
    assert run.join() is None
    # Then over that second and more, each agent woke for heartbeats and little else: it
    # relays nothing (with relaying it woke at least twice per quantum, 400 times here)
    assert time.monotonic() - t0 > 1.0
    for pid in first:
        assert last[pid] - first[pid] < 40, f"agent {pid} woke {last[pid] - first[pid]} times"


def _alive(agents: list[psutil.Process]) -> bool:
    return any(a.is_running() and a.status() != psutil.STATUS_ZOMBIE for a in agents)


def test_huge_exception_message_is_a_prompt_failure(butler: Butler) -> None:
    graph = QuantumGraph.from_quanta([quantum("big", "big_failure", config={"size": 200_000})])
    ex = make(3, timeout=60.0)
    t0 = time.monotonic()
    with pytest.raises(MPGraphExecutorError) as info:
        ex.execute(graph, butler)
    assert not isinstance(info.value, MPTimeoutError)
    assert time.monotonic() - t0 < 10
    exc = ex.getReport().report_for("big").exceptionInfo
    assert exc is not None and len(exc.message) == 200_000


class _ForceOrder:
    """Fixup: run the quanta in reverse id order, one after another."""

    def fixup_graph(self, xgraph: nx.DiGraph[str]) -> nx.DiGraph[str]:
        ids = sorted(xgraph.nodes, reverse=True)
        xgraph.add_edges_from(itertools.pairwise(ids))
        return xgraph


class _MakeCycle:
    def fixup_graph(self, xgraph: nx.DiGraph[str]) -> None:
        xgraph.add_edge("c1", "c0")


@pytest.mark.parametrize("num_proc", MODES)
def test_graph_fixup_forces_an_order(num_proc: int, butler: Butler, tmp_path: Path) -> None:
    log = tmp_path / "order.txt"
    graph = QuantumGraph.from_quanta(
        [quantum(f"q{i}", "record", config={"path": str(log), "tag": f"q{i}"}) for i in range(5)]
    )
    ex = make(num_proc, executionGraphFixup=_ForceOrder())
    ex.execute(graph, butler)
    assert log.read_text().split() == ["q4", "q3", "q2", "q1", "q0"]


def test_graph_fixup_making_a_cycle_fails_before_running(butler: Butler) -> None:
    from tests.graphs import chain

    ex = make(3, executionGraphFixup=_MakeCycle())
    with pytest.raises(MPGraphExecutorError, match="cycle"):
        ex.execute(chain(2), butler)
    assert not butler.exists("c0")
    with pytest.raises(RuntimeError):
        ex.getReport()


def test_get_report_before_execute_raises() -> None:
    with pytest.raises(RuntimeError, match="execute"):
        make(2).getReport()


def test_num_proc_below_one_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        make(0)


def test_report_round_trips_through_json(butler: Butler) -> None:
    ex = make(3)
    with pytest.raises(MPGraphExecutorError):
        ex.execute(_per_detector_graph(bad_detector=1), butler)
    report = ex.getReport()
    text = report.to_json()
    again = Report.from_json(text)
    assert again.to_json() == text
    assert json.loads(text)["quantaReports"][0].keys() == {
        "status",
        "dataId",
        "taskLabel",
        "exitCode",
        "exceptionInfo",
        "quantumId",
    }


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_repeated_runs_leak_no_file_descriptors(butler: Butler) -> None:
    graph = independent(6)
    make(2).execute(graph, butler)  # warm-up: imports and lazily opened files
    before = _open_fds()
    for _ in range(4):
        make(2).execute(graph, butler)
    assert _open_fds() <= before


def test_gil_holding_task_is_not_declared_lost(butler: Butler) -> None:
    # Given heartbeats every 0.1 s and loss after 3 missed ones
    graph = QuantumGraph.from_quanta([quantum("gil", "hold_gil", config={"seconds": 2.5})])
    ex = make(2, heartbeat_interval_s=0.1, liveness=3)
    # When a task holds the GIL in C code for 2.5 s
    ex.execute(graph, butler)
    # Then it succeeds on its first attempt: the agent kept heartbeating
    report = ex.getReport()
    assert report.report_for("gil").status is ExecutionStatus.SUCCESS
    assert report.details("gil").attempts == 1
    assert butler.get("gil") >= 2.5


def test_sigkilled_executor_child_fails_the_quantum_and_worker_keeps_serving(
    butler: Butler,
) -> None:
    # The quantum kills its own executor process; later quanta run on the same worker.
    qs = [quantum("killed", "crash", config={"sig": int(signal.SIGKILL)})]
    qs += [quantum(f"after{i}", "sleep", config={"seconds": 0.3}) for i in range(4)]
    ex = make(2)
    with pytest.raises(MPGraphExecutorError, match="SIGKILL"):
        ex.execute(QuantumGraph.from_quanta(qs), butler)
    report = ex.getReport()
    assert report.report_for("killed").exitCode == -signal.SIGKILL
    assert report.details("killed").attempts == 1
    assert report.counts()[ExecutionStatus.SUCCESS] == 4
    # The agent replaced its executor child, not itself: the same two workers served all.
    workers = {report.details(f"after{i}").worker for i in range(4)}
    assert report.details("killed").worker in workers
    assert workers <= {"w1", "w2"}


def test_task_output_is_captured_at_the_fd_level(butler: Butler) -> None:
    graph = QuantumGraph.from_quanta([quantum("chat", "chatty", config={"text": "hi"})])
    ex = make(2)
    ex.execute(graph, butler)
    log = ex.getReport().details("chat").logPath
    assert log is not None
    text = Path(log).read_text()
    for line in ("stdout: hi", "stderr: hi", "logging: hi", "subprocess: hi"):
        assert line in text


def test_pdb_post_mortem_runs_in_process_on_a_task_exception(butler: Butler) -> None:
    from tests import debugger

    debugger.calls.clear()
    graph = QuantumGraph.from_quanta([quantum("ok1"), quantum("bad", "fail")])
    ex = make(1, pdb="tests.debugger")
    with pytest.raises(MPGraphExecutorError):
        ex.execute(graph, butler)
    assert len(debugger.calls) == 1
    tb = debugger.calls[0]
    assert tb is not None
    while tb.tb_next is not None:
        tb = tb.tb_next
    assert tb.tb_frame.f_code.co_name == "fail"  # the debugger sees the task's own frame


def test_progress_snapshots_arrive_during_a_run(butler: Butler) -> None:

    seen: list[RunStatus] = []
    graph = independent(6, "sleep", seconds=0.2)
    ex = make(2, progress=seen.append, progress_interval_s=0.05)
    ex.execute(graph, butler)
    assert len(seen) >= 3
    assert all(p.total == 6 for p in seen)
    assert any(p.count("running") > 0 for p in seen)
    assert any(p.running and p.running[0].worker in {"w1", "w2"} for p in seen)
    assert any(p.eta_s is not None for p in seen)  # once a duration was learned
    elapsed = [p.elapsed_s for p in seen]
    assert elapsed == sorted(elapsed)


def _most_held(snapshots: list[RunStatus]) -> int:
    """The most quanta one worker held (running and queued) in any snapshot."""
    counts = [
        max(sum(1 for r in p.running if r.worker == w) for w in {r.worker for r in p.running})
        for p in snapshots
        if p.running
    ]
    return max(counts, default=0)


def test_short_quanta_are_sent_several_at_a_time_and_long_ones_are_not(butler: Butler) -> None:
    # Quanta far shorter than a dispatch round trip: a worker is sent a queue of them.
    seen: list[RunStatus] = []
    graph = QuantumGraph.from_quanta([quantum(f"q{i}", outputs=[]) for i in range(3000)])
    make(2, progress=seen.append, progress_interval_s=0.02).execute(graph, butler)
    assert _most_held(seen) > 2, "never more than the running quantum and one prefetched"
    # Quanta longer than it: the running one and one prefetched (work is not pinned early).
    seen.clear()
    make(2, progress=seen.append, progress_interval_s=0.02).execute(
        independent(8, "sleep", seconds=0.15), butler
    )
    assert 0 < _most_held(seen) <= 2


@pytest.mark.parametrize("every", [1, 3])
def test_executor_children_are_recycled_after_n_quanta(butler: Butler, every: int) -> None:
    graph = independent(9, "pid")
    ex = make(2, max_quanta_per_executor=every)
    ex.execute(graph, butler)
    pids = [butler.get(f"q{i}") for i in range(9)]
    assert max(pids.count(p) for p in pids) <= every
    if every == 1:
        assert len(set(pids)) == 9  # LSST's isolation: a fresh process per quantum


def test_executor_child_over_the_rss_limit_is_replaced(butler: Butler) -> None:
    # Given one worker and a first quantum that leaves 200 MB allocated in its process
    first = quantum("hog", "allocate", config={"mb": 200})
    after = [quantum(f"p{i}", "pid", inputs=["hog"] if i == 0 else [f"p{i - 1}"]) for i in range(3)]
    ex = make(2, max_rss_mb=150)
    ex.execute(QuantumGraph.from_quanta([first, *after]), butler)
    # Then the quantum after it ran in a fresh process, and later ones share that one
    hog_pid = butler.get("hog")
    pids = [butler.get(f"p{i}") for i in range(3)]
    assert hog_pid not in pids


def test_graceful_stop_lets_running_quanta_finish_and_cancels_the_rest(
    butler: Butler, tmp_path: Path
) -> None:
    # Given two workers that have started one 1 s quantum each, six more waiting
    started = tmp_path / "started"
    graph = QuantumGraph.from_quanta(
        [
            quantum(f"s{i}", "record_then_nap", config={"path": str(started), "tag": f"s{i}"})
            for i in range(8)
        ]
    )
    ex = make(2, shutdown_grace_s=10.0, prefetch=1)
    run = Background(ex, graph, butler)
    wait_until(
        lambda: started.exists() and len(started.read_text().split()) == 2,
        30,
        "two quanta to start",
    )
    # When the run is stopped gracefully
    ex.request_stop("test stop")
    assert isinstance(run.join(30), MPGraphExecutorError)
    report = ex.getReport()
    counts = report.counts()
    assert counts[ExecutionStatus.SUCCESS] == 2  # the two running ones finished
    assert counts[ExecutionStatus.SKIPPED] == 6
    cancelled = [d for d in report.quantaDetails.values() if d.reason is Reason.CANCELLED]
    assert len(cancelled) == 6


def test_quantum_prefetched_behind_a_long_one_is_taken_back_by_an_idle_worker(
    butler: Butler,
) -> None:
    # Given two workers, each prefetching one quantum, and one long quantum among short ones
    qs = [quantum("long", "sleep", config={"seconds": 4.0})]
    qs += [quantum(f"short{i}", "sleep", config={"seconds": 0.2}) for i in range(3)]
    ex = make(2, prefetch=1)
    # When it runs
    ex.execute(QuantumGraph.from_quanta(qs), butler)
    # Then no short quantum waited for the long one: all ended well before it
    report = ex.getReport()
    long_end = report.details("long").endTime
    assert long_end is not None
    for i in range(3):
        d = report.details(f"short{i}")
        assert d.endTime is not None and d.endTime < long_end - 2.0, d
        assert d.attempts == 1  # a taken-back dispatch does not count as an attempt


def _recorded_chain(path: Path, bad: int, task: str, **config: object) -> QuantumGraph:
    """c0 -> c1 -> ... (ordering edges: no link reads another's output, so only the
    executor's rules keep a link from running); each records its tag in ``path``, but
    ``c<bad>`` runs ``task`` instead."""
    qs = [
        quantum(f"c{i}", task, config=dict(config))
        if i == bad
        else quantum(f"c{i}", "record", config={"path": str(path), "tag": f"c{i}"})
        for i in range(8)
    ]
    return QuantumGraph.from_quanta(qs, [(f"c{i - 1}", f"c{i}") for i in range(1, 8)])


@pytest.mark.parametrize(
    ("task", "config"),
    [
        pytest.param("fail", {}, id="task-fails"),
        pytest.param("crash", {"sig": int(signal.SIGKILL)}, id="executor-killed"),
    ],
)
def test_a_chain_runs_where_it_started_and_nothing_after_a_failed_link_runs(
    task: str, config: dict[str, object], butler: Butler, tmp_path: Path
) -> None:
    # Given a chain whose links are sent ahead to the worker running the link before them
    ex = make(2, run_dir=tmp_path / "run")
    path = tmp_path / "ran"
    with pytest.raises(MPGraphExecutorError):
        ex.execute(_recorded_chain(path, 4, task, **config), butler)
    report = ex.getReport()
    # (c5 was sent while c4 ran)
    with contextlib.closing(sqlite3.connect(tmp_path / "run" / "journal.sqlite3")) as db:
        rows = db.execute("SELECT state FROM transitions WHERE quantum_id = 'c5' ORDER BY seq")
        assert [state for (state,) in rows] == ["running", "skipped"]
    # Then the links before the failed one ran in order, on one worker; none after it ran
    assert path.read_text().split() == ["c0", "c1", "c2", "c3"]
    assert len({report.details(f"c{i}").worker for i in range(5)}) == 1
    assert report.report_for("c4").status is ExecutionStatus.FAILURE
    for i in range(5, 8):
        assert report.report_for(f"c{i}").status is ExecutionStatus.SKIPPED
        assert report.details(f"c{i}").attempts == 0
        assert report.details(f"c{i}").blockedBy == ("c4",)


def test_each_quantum_of_an_executor_gets_its_own_output_and_only_its_own(
    butler: Butler,
) -> None:
    # Given quanta run one after another on one executor: some write, some do not
    names = ["a", "quiet1", "b", "quiet2", "bad"]
    qs = [
        quantum("a", "chatty", config={"text": "from-a"}),
        quantum("quiet1"),
        quantum("b", "chatty", config={"text": "from-b"}),
        quantum("quiet2"),
        quantum("bad", "fail", config={"message": "bad-failed"}),
    ]
    edges = list(itertools.pairwise(names))
    ex = make(2)
    with pytest.raises(MPGraphExecutorError):
        ex.execute(QuantumGraph.from_quanta(qs, edges), butler)
    report = ex.getReport()
    assert len({report.details(n).worker for n in names}) == 1
    # Then quiet quanta have no log, and each log holds its quantum's output once, no other's
    assert report.details("quiet1").logPath is None
    assert report.details("quiet2").logPath is None
    logs = {n: Path(report.details(n).logPath or "").read_text() for n in ("a", "b", "bad")}
    for line in ("stdout: from-a", "stderr: from-a", "logging: from-a", "subprocess: from-a"):
        assert logs["a"].count(line) == 1
    assert "from-b" not in logs["a"] and "from-a" not in logs["b"]
    assert logs["b"].count("stdout: from-b") == 1
    assert "bad-failed" in logs["bad"] and "from-" not in logs["bad"]
