"""A worker that completed the handshake and then sends hostile frames: the broker drops them
(rate-limited warnings), never crashes, and every other quantum runs exactly once."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from broker import MPGraphExecutor
from common.butler import Butler
from common.codec import decode, encode
from common.graph import QuantumGraph
from common.protocol import (
    Assign,
    Goodbye,
    Heartbeat,
    Hello,
    Ready,
    Result,
    ResultStatus,
    Welcome,
)
from common.report import ExecutionStatus, Reason
from tests.conftest import Background, wait_until
from tests.graphs import quantum
from tests.wire import EVERY_MESSAGE, frame_with, wrong_type_frames
from worker.executor import TaskQuantumExecutor

N = 10


@pytest.fixture
def zctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def _graph(repo: Path, record: Path) -> QuantumGraph:
    return QuantumGraph.from_quanta(
        [
            quantum(
                f"q{i}",
                "journaled",
                config={
                    "repo": str(repo),
                    "run": "main",
                    "record": str(record),
                    "me": f"q{i}",
                    "out": f"q{i}",
                    "seconds": 0.1,
                },
            )
            for i in range(N)
        ]
    )


def _result(qid: str, attempt: int) -> Result:
    now = time.time()
    return Result(qid, attempt, ResultStatus.SUCCESS, 0, None, None, None, now, now, 0.1, 1, None)


def _hostile(qid: str, attempt: int) -> list[bytes]:
    """Frames a broken or malicious worker might send about quantum ``qid``."""
    good = _result(qid, attempt)
    frames = [
        frame_with(good, reason="no-such-reason", status="failure"),
        frame_with(good, status="exploded"),
        encode(_result("no-such-quantum", 1)),
        encode(_result(qid, attempt + 1)),  # an attempt never dispatched
        frame_with(good, duration_s=math.nan),
        frame_with(good, duration_s=-1.0),
        frame_with(good, duration_s=1e308),
        frame_with(good, attempt=2**63 - 1),
        frame_with(good, attempt=-1),
        frame_with(good, max_rss_kb=-5),
        frame_with(_result(qid, attempt + 1), exc_message="x" * 2_000_000, status="failure"),
        encode(Hello(pid=1, host="h" * 1_000_000, slots=1)),  # a second HELLO
    ]
    for message in EVERY_MESSAGE:
        frames += [frame for _, frame in wrong_type_frames(message)]
    return frames


def test_handshaken_worker_sending_garbage_never_crashes_the_broker(
    tmp_path: Path, zctx: zmq.Context[zmq.Socket[bytes]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    repo, record = tmp_path / "repo", tmp_path / "record.txt"
    butler = Butler(repo)
    ex = MPGraphExecutor(2, 30.0, TaskQuantumExecutor(), heartbeat_interval_s=0.5, retries=1)
    run = Background(ex, _graph(repo, record), butler)
    wait_until(lambda: ex.endpoint is not None, 30, "the broker to serve")
    assert ex.endpoint is not None
    fake = zctx.socket(zmq.DEALER)
    fake.setsockopt(zmq.LINGER, 0)
    fake.connect(ex.endpoint)

    def receive(kind: type, timeout_s: float = 20.0) -> object:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if fake.poll(100):
                msg = decode(fake.recv())
                if isinstance(msg, kind):
                    return msg
        raise AssertionError(f"no {kind.__name__} from the broker")

    # Given a worker that completed the handshake and took a quantum
    fake.send(encode(Hello(pid=99999, host="fuzzer", slots=1)))
    welcome = receive(Welcome)
    assert isinstance(welcome, Welcome)
    fake.send(encode(Ready(worker_id=welcome.worker_id, pid=99999, generation=1)))
    assign = receive(Assign)
    assert isinstance(assign, Assign)
    taken = assign.quantum.id
    # When it sends every kind of hostile frame, about its own quantum and about others
    sent = 0
    for qid, attempt in ((taken, assign.attempt), ("q0", 1), ("q1", 1)):
        for frame in _hostile(qid, attempt):
            fake.send(frame)
            sent += 1
    fake.send(encode(Heartbeat()))
    # ... and finally leaves, so its quantum is retried on a real worker
    fake.send(encode(Goodbye(reason="done fuzzing")))
    error = run.join(60)
    fake.close(linger=0)
    # Then the run completed with every quantum run exactly once by a real worker
    assert error is None, error
    report = ex.getReport()
    assert report.counts()[ExecutionStatus.SUCCESS] == N
    runs = sorted(record.read_text().split("\n")[:-1])
    assert runs == sorted(f"RUN q{i}" for i in range(N))
    for i in range(N):
        details = report.details(f"q{i}")
        assert details.worker != welcome.worker_id
        assert details.reason is None
        assert details.attempts == (2 if f"q{i}" == taken else 1)
    assert sent > 200
    # and the drops were logged, rate-limited, not once per frame
    drops = [r for r in caplog.records if r.name.startswith("broker")]
    assert drops and len(drops) < sent / 4
    assert Reason.WORKER_LOST not in {report.details(f"q{i}").reason for i in range(N)}


def test_workers_preload_the_executors_and_butlers_modules_with_the_tasks(
    tmp_path: Path, zctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    """A replacement executor child (after a timeout, a crash, recycling) is forked with them
    imported, instead of importing them again before it can run anything."""
    ex = MPGraphExecutor(2, 30.0, TaskQuantumExecutor())
    graph = QuantumGraph.from_quanta(
        [quantum(f"n{i}", "nap", config={"seconds": 0.3}) for i in range(4)]
    )
    run = Background(ex, graph, Butler(tmp_path / "repo"))
    wait_until(lambda: ex.endpoint is not None, 30, "the broker to serve")
    assert ex.endpoint is not None
    fake = zctx.socket(zmq.DEALER)
    fake.setsockopt(zmq.LINGER, 0)
    fake.connect(ex.endpoint)
    fake.send(encode(Hello(pid=99999, host="probe", slots=1)))
    assert fake.poll(20_000), "no WELCOME from the broker"
    welcome = decode(fake.recv())
    assert isinstance(welcome, Welcome)
    assert {"tests.tasks", "worker.executor", "common.butler"} <= set(welcome.preload)
    fake.close()
    assert run.join() is None
