"""Admission by resources, inside the core and alone: a quantum starts only where what runs
plus its own request fits every budget; a big quantum at the head is not starved; requests are
declared, configured or learned. Stepped with chosen times, no sockets."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from broker.core import STEAL_AFTER_S
from broker.core.admission import UNMEASURED, Admission, Budget
from broker.core.events import (
    Dispatch,
    ExecutorGone,
    HostMemory,
    PreemptQuantum,
    QuantumRevoked,
    ResultReceived,
    RevokeQuantum,
    WorkerHeard,
    WorkerJoined,
    WorkerLeft,
    WorkerReady,
)
from broker.core.pressure import GRACE_S
from broker.core.state import QState
from common.errors import GraphError
from common.graph import QuantumGraph
from common.protocol import ResultStatus
from common.report import Reason
from common.status import RunStatus
from tests.graphs import quantum
from tests.unit.harness import Harness, exited, result

A, B, C, D = b"wa", b"wb", b"wc", b"wd"


def running(h: Harness) -> dict[str, Dispatch]:
    """Every quantum held by a worker now, with the dispatch that sent it."""
    held = {d.quantum_id for w in h.core.registry.workers() for d in w.in_flight.values()}
    return {d.quantum_id: d for d in h.sent if d.quantum_id in held}


def join(h: Harness, *workers: bytes, slots: int = 1) -> None:
    for w in workers:
        h.join(w, slots)


def finish(h: Harness, d: Dispatch, at: float, rss_mb: float | None = None) -> None:
    rss = None if rss_mb is None else int(rss_mb * 1024)
    h.step(ResultReceived(d.worker, result(d, max_rss_kb=rss)), at=at)


def graph(*sizes: str, label: str = "t") -> QuantumGraph:
    return QuantumGraph.from_quanta(
        [quantum(f"q{n}", label=label, resources={"memory": m}) for n, m in enumerate(sizes)]
    )


def test_quanta_start_only_while_their_memory_fits_the_budget() -> None:
    # Given three quanta of 600 MiB and a 1500 MiB budget, three idle workers
    h = Harness(graph("600MB", "600MB", "600MB"), memory_mb=1500)
    join(h, A, B, C)
    # Then two start, the third waits until one ends
    assert set(running(h)) == {"q0", "q1"}
    finish(h, running(h)["q0"], at=1.0)
    assert set(running(h)) == {"q1", "q2"}
    assert h.core.held()["memory"] == 1200


def test_a_queued_quantum_holds_only_what_it_adds_to_the_running_one() -> None:
    # Given one worker that may hold two quanta, a large and a small one ready
    g = QuantumGraph.from_quanta(
        [
            quantum("big", resources={"memory": 1000}),
            quantum("small", resources={"memory": 100}),
        ]
    )
    h = Harness(g, memory_mb=1000)
    h.join(A, slots=2)
    # Then the small one is queued behind the big one: the worker holds 1000 MiB, not 1100
    assert {d.quantum_id for d in h.dispatches(A)} == {"big", "small"}
    assert h.core.held()["memory"] == 1000


def test_cpus_count_one_each_unless_declared() -> None:
    g = QuantumGraph.from_quanta(
        [quantum("wide", resources={"cpus": 2}), quantum("a"), quantum("b")]
    )
    h = Harness(g, cpus=2)
    join(h, A, B, C)
    assert set(running(h)) == {"wide"}  # graph order: it takes both
    assert running(h)["wide"].cpus == 2
    finish(h, running(h)["wide"], at=1.0)
    assert set(running(h)) == {"a", "b"}
    assert {d.cpus for d in running(h).values()} == {None}  # (declared none: LSST's default)


@pytest.mark.parametrize(("from_host", "at_once"), [(True, 3), (False, 2)])
def test_a_default_cpus_budget_grows_with_the_workers_a_given_one_does_not(
    from_host: bool, at_once: int
) -> None:
    # Given a cpus budget of 2 (the host's default, or the user's) and three workers (one
    # attached beyond -j 2), and quanta that declare nothing
    g = QuantumGraph.from_quanta([quantum(f"q{n}") for n in range(6)])
    h = Harness(g, cpus=2, cpus_from_host=from_host)
    join(h, A, B, C)
    # Then the default lets every worker run one; the user's 2 cores hold
    assert len(running(h)) == at_once


def test_a_custom_resource_caps_the_quanta_that_declare_it() -> None:
    g = QuantumGraph.from_quanta(
        [quantum(f"db{n}", resources={"db": 1}) for n in range(3)] + [quantum("free")]
    )
    h = Harness(g, resources={"db": 1})
    join(h, A, B, C, D)
    assert set(running(h)) == {"db0", "free"}
    finish(h, running(h)["db0"], at=1.0)
    assert set(running(h)) == {"db1", "free"}


def test_a_quantum_bigger_than_the_budget_is_refused_before_anything_runs() -> None:
    g = graph("1GB", "3GB", "3GB", label="huge")
    with pytest.raises(
        GraphError, match=r"'q1' asks for 3.0 GiB of memory, more than the budget of 2.0 GiB"
    ) as e:
        Harness(g, memory_mb=2048)
    assert set(e.value.quanta) == {"q1", "q2"}
    g = QuantumGraph.from_quanta([quantum("g", label="gpu")], resources={"gpu": {"gpu": 1}})
    with pytest.raises(GraphError, match="resource 'gpu', which the run does not offer"):
        Harness(g)


def learn(harness: Harness, **durations: float) -> None:
    """As if quanta of these labels had run this long."""
    core = harness.core
    for label, seconds in durations.items():
        core.scheduler.learn(core.graph.labels.index(label), seconds)


def test_the_head_is_not_starved_by_small_quanta_behind_it() -> None:
    # Given a 1001 MiB budget: "run" (600 MiB, 1 s, then a 20 s "tail" of 1 MiB) runs; the
    # most critical ready quantum after it, "head", needs 800; behind it a stream of long
    # 100 MiB quanta (5 s)
    g = QuantumGraph.from_quanta(
        [
            quantum("run", label="r", resources={"memory": 600}),
            quantum("tail", label="t", inputs=["run"], resources={"memory": 1}),
            quantum("head", label="h", resources={"memory": 800}),
        ]
        + [quantum(f"s{n}", label="s", resources={"memory": 100}) for n in range(6)]
    )
    h = Harness(g, memory_mb=1001)
    learn(h, r=1.0, t=20.0, h=10.0, s=5.0)
    join(h, A, B, C, D)
    # Then the long small ones go ahead only as far as the head still fits beside them when
    # "run" ends (1001 - 800 - 1 = 200 MiB: two of them), not into all that is free now
    assert set(running(h)) == {"run", "s0", "s1"}
    finish(h, running(h)["run"], at=1.0)
    assert set(running(h)) == {"tail", "head", "s0", "s1"}


def test_a_child_released_while_no_worker_was_free_does_not_pass_the_head() -> None:
    # Given a 1001 MiB budget: "run" (600 MiB, 1 s) on A, "p" (1 s) on B, and "head" (800)
    # waiting for "run" to end; "p"'s child "c" needs 300 MiB for 5 s
    g = QuantumGraph.from_quanta(
        [
            quantum("run", label="r", resources={"memory": 600}),
            quantum("tail", label="t", inputs=["run"], resources={"memory": 1}),
            quantum("head", label="h", resources={"memory": 800}),
            quantum("p", label="p", resources={"memory": 1}),
            quantum("c", label="c", inputs=["p"], resources={"memory": 300}),
        ]
    )
    h = Harness(g, memory_mb=1001)
    learn(h, r=1.0, t=20.0, h=10.0, p=1.0, c=5.0)
    join(h, A, B)
    assert set(running(h)) == {"run", "p"}
    h.step(WorkerHeard(A), WorkerHeard(B), at=0.5)  # (a step with no worker free)
    # When "p" ends, "c" does not start: it would still hold 300 MiB when "run" ends, and
    # the head needs all but 201 of the budget then
    finish(h, running(h)["p"], at=0.6)
    assert set(running(h)) == {"run"}
    finish(h, running(h)["run"], at=1.0)
    assert set(running(h)) == {"tail", "head"}


def test_short_quanta_fill_the_gap_before_the_head_starts() -> None:
    # Given "r0" (600 MiB) running 10 s, "head" (900 MiB) next, and 1 s quanta of 300 MiB
    g = QuantumGraph.from_quanta(
        [
            quantum("r0", label="r", resources={"memory": 600}),
            quantum("head", label="h", resources={"memory": 900}),
        ]
        + [quantum(f"s{n}", label="s", resources={"memory": 300}) for n in range(3)]
    )
    h = Harness(g, memory_mb=1000)
    learn(h, r=10.0, s=1.0, h=1.0)
    join(h, A, B, C)
    # Then short ones run beside r0 one after another (they end before r0 does, so the
    # head is not delayed), and the head starts as soon as r0 ends
    assert set(running(h)) == {"r0", "s0"}
    for n in range(3):
        assert set(running(h)) == {"r0", f"s{n}"}
        finish(h, running(h)[f"s{n}"], at=1.0 + n)
    assert set(running(h)) == {"r0"}
    finish(h, running(h)["r0"], at=10.0)
    assert set(running(h)) == {"head"}


def test_memory_is_learned_per_label_after_a_cautious_first_quantum() -> None:
    # Given quanta that declare nothing, a 1000 MiB budget, four workers
    g = QuantumGraph.from_quanta([quantum(f"q{n}", label="t") for n in range(6)])
    h = Harness(g, memory_mb=1000)
    join(h, A, B, C, D)
    # Then only the first runs: its label has not been measured
    assert set(running(h)) == {"q0"}
    assert running(h)["q0"].memory_mb is None  # learned requests are not enforced
    # Once it reports a 280 MiB peak of which its executor held 40 before it, each asks
    # 1.05 x 240 = 252 MiB: three fit in 1000, not four
    d = running(h)["q0"]
    r = result(d, max_rss_kb=280 * 1024, base_rss_kb=40 * 1024)
    h.step(ResultReceived(d.worker, r), at=1.0)
    assert len(running(h)) == 3
    assert h.core.held()["memory"] == pytest.approx(3 * 252)
    # and the report keeps the process's peak
    assert h.core.report(None).details("q0").maxRss == 280 * 1024


def test_declared_memory_travels_with_the_dispatch_unless_enforcement_is_off() -> None:
    h = Harness(graph("2GB"), memory_mb=4096)
    h.join(A)
    assert h.dispatches()[0].memory_mb == 2048
    h = Harness(graph("2GB"), memory_mb=4096, memory_enforce="off")
    h.join(A)
    assert h.dispatches()[0].memory_mb is None


def test_run_defaults_and_label_requests_give_quanta_that_declare_nothing() -> None:
    g = QuantumGraph.from_quanta(
        [
            quantum("a", label="isr"),
            quantum("b", label="calib"),
            quantum("c", label="isr", resources={"memory": 50}),
        ],
        resources={"calib": {"memory": 300}},
    )
    h = Harness(
        g,
        memory_mb=1000,
        memory_per_quantum_mb=100,
        cores_per_quantum=1,
        label_requests={"isr": {"memory": 200}, "calib": {"memory": 999}},
    )
    adm = h.core.admission
    # the graph's label block over the configuration's, the configuration's over the default
    assert adm.declared_memory(g.index("a")) == 200
    assert adm.declared_memory(g.index("b")) == 300
    assert adm.declared_memory(g.index("c")) == 50


def test_a_lost_worker_frees_what_it_held() -> None:
    h = Harness(graph("600MB", "600MB", "600MB"), memory_mb=1500)
    join(h, A, B)
    assert h.core.held()["memory"] == 1200
    h.step(WorkerLeft(A, "gone"), at=1.0)
    assert set(running(h)) == {"q1"}
    assert h.core.held()["memory"] == 600
    join(h, C)
    assert set(running(h)) == {"q0", "q1"}  # q0 again (its attempt was lost), not q2
    assert h.core.held()["memory"] == 1200


def test_holding_alone() -> None:
    # Given a worker running two threads
    adm = Admission(Budget(memory_mb=1000), {}, lambda i: 0, ["t"])
    adm.hold(A, 2, 0, (400.0, 1.0), 0)
    adm.hold(A, 2, 1, (300.0, 1.0), 0)
    adm.hold(A, 2, 2, (200.0, 1.0), 0)
    # it holds the two largest at once
    assert adm.in_use()["memory"] == 700
    adm.release(A, 0)
    assert adm.in_use()["memory"] == 500
    assert adm.fits(B, 1, (500.0, 1.0), 0)
    assert not adm.fits(B, 1, (501.0, 1.0), 0)
    assert adm.vector(0)[0] == UNMEASURED


def fail(h: Harness, d: Dispatch, at: float, reason: Reason, code: int = 1, **kw: Any) -> None:
    r = result(d, ResultStatus.FAILURE, exit_code=code, reason=reason, **kw)
    h.step(ResultReceived(d.worker, r), at=at)


def test_a_memory_failure_is_retried_with_a_larger_request_up_to_the_max() -> None:
    h = Harness(graph("1GB"), memory_mb=4096, memory_multiplier=1.5, memory_max_mb=2000, retries=3)
    join(h, A)
    first = running(h)["q0"]
    assert first.memory_mb == 1024
    fail(h, first, 1.0, Reason.MEMORY, max_rss_kb=1100 * 1024)
    second = running(h)["q0"]
    assert (second.attempt, second.memory_mb) == (2, 1536)
    fail(h, second, 2.0, Reason.MEMORY)
    third = running(h)["q0"]
    assert (third.attempt, third.memory_mb) == (3, 2000)  # capped at the max
    fail(h, third, 3.0, Reason.MEMORY, max_rss_kb=2100 * 1024)
    assert h.state("q0") is QState.FAILED  # at the max already: no more
    assert h.reason("q0") is Reason.MEMORY
    # and the report shows each attempt's request, peak and cause
    details = h.core.report(None).details("q0")
    assert (details.attempts, details.memoryRequest, details.maxRss) == (3, 2000, 2100 * 1024)
    assert [(a.attempt, a.memoryRequest, a.maxRss, a.reason) for a in details.earlier] == [
        (1, 1024, 1100 * 1024, Reason.MEMORY),
        (2, 1536, None, Reason.MEMORY),
    ]


def test_a_child_killed_for_memory_reports_the_peak_its_agent_watched() -> None:
    # Given a quantum whose executor child its agent killed past its request
    h = Harness(graph("100MB"), memory_mb=4096, memory_multiplier=2.0, retries=1)
    join(h, A)
    d = running(h)["q0"]
    gone = exited(0, d.seq, True, -9, max_rss_kb=150 * 1024)
    gone = dataclasses.replace(gone, reason=Reason.MEMORY, detail="used 150 MiB; killed")
    h.step(ExecutorGone(A, gone), WorkerHeard(A), at=1.0)
    # then it is retried with twice the request, and the report keeps that attempt's peak
    join(h, B)
    assert (running(h)["q0"].attempt, running(h)["q0"].memory_mb) == (2, 200)
    [first] = h.core.report(None).details("q0").earlier
    assert (first.reason, first.memoryRequest, first.maxRss) == (Reason.MEMORY, 100, 150 * 1024)


def test_memory_failures_are_not_retried_without_a_multiplier() -> None:
    h = Harness(graph("1GB"), memory_mb=4096, retries=3)
    join(h, A)
    fail(h, running(h)["q0"], 1.0, Reason.MEMORY)
    assert h.state("q0") is QState.FAILED


def test_failures_are_retried_unless_their_exit_code_is_excluded() -> None:
    g = QuantumGraph.from_quanta([quantum("a"), quantum("b")])
    h = Harness(g, retries=2, retry_unless_exit=frozenset({21}))
    join(h, A, B)
    fail(h, running(h)["a"], 1.0, Reason.EXCEPTION, code=1)
    fail(h, running(h)["b"], 1.0, Reason.EXCEPTION, code=21)
    assert h.state("b") is QState.FAILED  # 21 is never retried
    assert running(h)["a"].attempt == 2
    # without retry_unless_exit a task's failure is final, as before
    h = Harness(g, retries=2)
    join(h, A, B)
    fail(h, running(h)["a"], 1.0, Reason.EXCEPTION)
    assert h.state("a") is QState.FAILED


def test_max_failures_stops_dispatching_and_lets_running_quanta_finish() -> None:
    g = QuantumGraph.from_quanta([quantum(f"q{n}") for n in range(6)])
    h = Harness(g, max_failures=2)
    join(h, A, B, C)
    fail(h, running(h)["q0"], 1.0, Reason.EXCEPTION)
    assert "q3" in running(h)  # one failure: going on
    fail(h, running(h)["q1"], 2.0, Reason.EXCEPTION)
    assert set(running(h)) == {"q2", "q3"}  # nothing new; these finish
    assert not h.core.over
    finish(h, running(h)["q2"], 3.0)
    finish(h, running(h)["q3"], 3.5)
    assert h.core.over
    assert h.state("q2") is QState.SUCCEEDED
    assert h.state("q4") is QState.CANCELLED


def test_status_shows_what_is_held_against_the_budget_and_why_quanta_wait() -> None:
    h = Harness(graph("600MB", "600MB", "600MB"), memory_mb=1500, cpus=4)
    join(h, A, B, C)
    status = h.core.status(h.now)
    assert [(r.name, r.used, r.budget) for r in status.resources] == [
        ("memory", 1200, 1500),
        ("cpus", 2, 4),
    ]
    assert [(w.id, w.why) for w in status.waiting] == [
        ("q2", "memory: needs 600 MiB, 300 MiB free")
    ]
    assert RunStatus.from_dict(status.to_dict()) == status


def test_memory_pressure_stops_admitting_then_puts_the_newest_quantum_back() -> None:
    # Given two running quanta that declared little but grow past the 1000 MiB budget
    g = QuantumGraph.from_quanta([quantum(f"q{n}", resources={"memory": 100}) for n in range(3)])
    h = Harness(g, memory_mb=1000)
    join(h, A)
    h.step(at=1.0)
    join(h, B)
    old, new = running(h)["q0"], running(h)["q1"]
    h.step(WorkerHeard(A, rss_kb=600 * 1024), WorkerHeard(B, rss_kb=600 * 1024), at=2.0)
    # Then nothing new starts, even on a free worker ...
    join(h, C)
    assert set(running(h)) == {"q0", "q1"}
    # ... and once it has lasted the grace, the most recently started is stopped
    h.step(at=2.0 + GRACE_S)
    assert [(p.worker, p.quantum_id) for p in h.of(PreemptQuantum)] == [(B, "q1")]
    h.step(at=2.5 + GRACE_S)
    assert h.of(PreemptQuantum) == []  # one at a time, each grace
    # When its worker reports the child's end, it goes back (no attempt spent, no failure)
    # and, the pressure being over, runs again
    gone = exited(0, new.seq, True, -9)
    h.step(ExecutorGone(B, gone), WorkerHeard(A, rss_kb=600 * 1024), at=3.0 + GRACE_S)
    again = running(h)["q1"]
    assert (again.worker, again.attempt) == (C, 1)
    finish(h, again, at=4.0 + GRACE_S)
    finish(h, old, at=5.0 + GRACE_S)
    details = h.core.report(None).details("q1")
    assert (details.putBack, details.attempts, details.reason) == (1, 1, None)


def test_what_a_finished_quantum_measured_is_not_counted_as_pressure() -> None:
    # Given A's quantum measured 900 MiB before it finished, then B's measures 600 MiB
    g = QuantumGraph.from_quanta([quantum(f"q{n}", resources={"memory": 100}) for n in range(3)])
    h = Harness(g, memory_mb=1000)
    join(h, A, B)
    h.step(WorkerHeard(A, rss_kb=900 * 1024), at=1.0)
    finish(h, running(h)["q0"], at=1.5)
    h.step(WorkerHeard(B, rss_kb=600 * 1024), at=1.6)
    # then only B's is in use, and what is ready still starts
    assert h.core.pressure.in_use_mb == pytest.approx(600)
    assert "q2" in running(h)


def test_low_host_memory_is_pressure_too() -> None:
    g = QuantumGraph.from_quanta([quantum(f"q{n}") for n in range(2)])
    h = Harness(g, memory_reserve_mb=2048)
    h.step(HostMemory(1000), at=0.5)
    join(h, A, B)
    assert running(h) == {}
    h.step(HostMemory(4000), at=1.0)
    assert set(running(h)) == {"q0", "q1"}


def test_a_probe_holds_all_that_was_free_until_it_ends() -> None:
    # Given a 1000 MiB budget the user set: "probe" of a label never measured, and "other"
    # that declares 500 MiB
    g = QuantumGraph.from_quanta(
        [quantum("probe", label="new"), quantum("other", label="known", resources={"memory": 500})]
    )
    h = Harness(g, memory_mb=1000)
    join(h, A, B)
    assert set(running(h)) == {"probe"}  # it took all that was free
    # What its agent measures while it runs does not shrink that: it may grow yet
    h.step(WorkerHeard(A, rss_kb=200 * 1024), at=0.5)
    assert set(running(h)) == {"probe"}
    assert h.core.held()["memory"] == pytest.approx(1000)
    # Once it ends with a 300 MiB peak, "other" starts beside what its label learned
    finish(h, running(h)["probe"], at=1.0, rss_mb=300)
    assert set(running(h)) == {"other"}
    assert h.core.held()["memory"] == pytest.approx(500)


def test_a_quantum_put_back_twice_is_not_stopped_again() -> None:
    # Given pressure that comes back whenever the one quantum runs
    h = Harness(graph("100MB"), memory_mb=1000)
    join(h, A)
    t = 0.0
    for _put_back in range(2):
        d = running(h)["q0"]
        h.step(WorkerHeard(A, rss_kb=2000 * 1024), at=t + 0.1)
        h.step(at=t + 0.1 + GRACE_S)
        assert [p.quantum_id for p in h.of(PreemptQuantum)] == ["q0"]
        h.step(ExecutorGone(A, exited(0, d.seq, True, -9)), at=t + 0.2 + GRACE_S)
        h.step(WorkerReady(A, 0), at=t + 0.3 + GRACE_S)  # (its replacement executor)
        t += 10.0
    assert h.core.report(None).details("q0").putBack == 2
    # Then the third time it runs through
    h.step(WorkerHeard(A, rss_kb=2000 * 1024), at=t + 0.1)
    h.step(at=t + 0.1 + 2 * GRACE_S)
    assert h.of(PreemptQuantum) == []


def test_a_probe_put_back_under_pressure_runs_again() -> None:
    # Given the first quantum of an unmeasured label, stopped under memory pressure
    g = QuantumGraph.from_quanta([quantum(f"q{n}", label="new") for n in range(2)])
    h = Harness(g, memory_mb=1000)
    join(h, A)
    d = running(h)["q0"]
    h.step(WorkerHeard(A, rss_kb=2000 * 1024), at=0.1)
    h.step(at=0.1 + GRACE_S)
    assert [p.quantum_id for p in h.of(PreemptQuantum)] == ["q0"]
    h.step(ExecutorGone(A, exited(0, d.seq, True, -9)), at=0.2 + GRACE_S)
    # When its worker is ready again, it runs again (its label is not left "probing")
    h.step(WorkerReady(A, 0), at=0.3 + GRACE_S)
    again = running(h)["q0"]
    assert again.attempt == 1 and again.seq != d.seq


@pytest.mark.parametrize(("queued", "taken_back"), [("300MB", True), ("400MB", False)])
def test_a_queued_quantum_is_taken_back_only_for_an_idle_worker_it_fits_on(
    queued: str, taken_back: bool
) -> None:
    # Given A runs 700 MiB of a 1000 MiB budget with a smaller quantum queued behind it
    # (it holds nothing more there), and B joins idle
    h = Harness(graph("700MB", queued), memory_mb=1000, workers=1)
    h.join(A, slots=2)
    assert [d.quantum_id for d in h.dispatches(A)] == ["q0", "q1"]
    h.step(WorkerJoined(B, 9, "host", 2, True), WorkerReady(B))
    # When q0 has run a while, q1 is taken back for B only if it fits there beside q0:
    # taken back to go nowhere else, it would be sent to A again, and again
    h.step(at=STEAL_AFTER_S)
    revokes = h.of(RevokeQuantum)
    assert [r.quantum_id for r in revokes] == (["q1"] if taken_back else [])
    for r in revokes:
        h.step(QuantumRevoked(A, r.quantum_id, r.attempt), at=STEAL_AFTER_S + 0.01)
        assert [d.quantum_id for d in h.dispatches(B)] == ["q1"]
    for t in (2, 3, 4):
        h.step(at=STEAL_AFTER_S * t)
        assert h.of(RevokeQuantum) == []
    assert h.core.held()["memory"] == (1000 if taken_back else 700)
