"""A tiny driver of the broker core for tests (``Harness``): it joins workers, collects the
actions, and turns a dispatch into a result when a test says so; ``now`` only moves when a
test moves it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

from broker.core import (
    BrokerCore,
)
from broker.core.events import (
    Action,
    Dispatch,
    Event,
    ResultReceived,
    WorkerHeard,
    WorkerJoined,
    WorkerReady,
)
from broker.core.planner import FIXED
from broker.core.state import QState
from common.config import ExecutionConfig
from common.graph import QuantumGraph
from common.protocol import ExecutorExited, Result, ResultStatus
from common.report import Reason

A, B, C = b"wa", b"wb", b"wc"


def result(
    d: Dispatch, status: ResultStatus = ResultStatus.SUCCESS, duration_s: float = 0.5, **kw: Any
) -> Result:
    reason = None if status is ResultStatus.SUCCESS else Reason.EXCEPTION
    base = Result(
        d.quantum_id, d.attempt, status, 0, None, None, reason, 1.0, 2.0, duration_s, None, None
    )
    return replace(base, **kw)


class Harness:
    """Drives a core; ``now`` only moves when a test moves it."""

    def __init__(self, graph: QuantumGraph, workers: int = 0, **config: Any) -> None:
        config.setdefault("num_workers", max(2, workers))
        config.setdefault("local_workers", workers)
        journal = config.pop("journal", None)
        done = [graph.index(qid) for qid in config.pop("done", ())]
        follow_ons = config.pop("follow_ons", False)
        spawns = config.pop("spawns", False)
        transport = config.pop("transport", FIXED)
        self.core = BrokerCore(
            graph,
            ExecutionConfig(**config),
            journal=journal,
            done=done,
            follow_ons=follow_ons,
            spawns=spawns,
            transport=transport,
            wall=lambda: 1000.0,
        )
        self.now = 0.0
        self.actions: list[Action] = self.core.start(self.now)
        self.sent: list[Dispatch] = []  # every dispatch so far

    def step(self, *events: Event, at: float | None = None) -> list[Action]:
        if at is not None:
            self.now = at
        self.actions = self.core.step(list(events), self.now)
        self.sent += [a for a in self.actions if isinstance(a, Dispatch)]
        return self.actions

    def join(self, worker: bytes, slots: int = 1, *, local: bool = True, pid: int = 0) -> None:
        self.step(
            WorkerJoined(worker, pid or len(worker), "host", slots, local), WorkerReady(worker)
        )

    def dispatches(self, worker: bytes | None = None) -> list[Dispatch]:
        return [
            a
            for a in self.actions
            if isinstance(a, Dispatch) and (worker is None or a.worker == worker)
        ]

    def of(self, kind: type[Any]) -> list[Any]:
        return [a for a in self.actions if isinstance(a, kind)]

    def state(self, qid: str) -> QState:
        return self.core.state.state(self.core.graph.index(qid))

    def attempts(self, qid: str) -> int:
        return self.core.ledger.attempts[self.core.graph.index(qid)]

    def reason(self, qid: str) -> Reason | None:
        return self.core.ledger.problem(self.core.graph.index(qid)).reason

    def ids(self, indices: Iterable[int]) -> set[str]:
        return {self.core.graph.ids[i] for i in indices}


def play(h: Harness, workers: Sequence[bytes], took: Callable[[Dispatch], float]) -> float:
    """Join ``workers`` (one slot each) and play the run in simulated time, each dispatch
    taking ``took(dispatch)`` seconds; the makespan."""
    for w in workers:
        h.join(w)
    running = sorted((h.now + took(d), n, d) for n, d in enumerate(h.dispatches()))
    n = len(running)
    while not h.core.over:
        end, _, d = running.pop(0)
        heard = [WorkerHeard(w) for w in workers]  # their agents heartbeat meanwhile
        h.step(ResultReceived(d.worker, result(d, duration_s=took(d))), *heard, at=end)
        for d in h.dispatches():
            running.append((end + took(d), n, d))
            n += 1
        running.sort()
    return h.now


def exited(
    generation: int, last_seq: int, running: bool, code: int = -11, **kw: Any
) -> ExecutorExited:
    status = ResultStatus.FAILURE
    reason = Reason.SIGNAL if running else None
    detail = "executor process killed by signal 11 (SIGSEGV)"
    return ExecutorExited(
        generation, last_seq, running, status, code, reason, detail, 5.0, 6.0, None, **kw
    )
