"""Garbage and strangers on the broker socket: logged and dropped, the run completes."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from broker import MPGraphExecutor
from common.butler import Butler
from common.codec import decode, encode
from common.protocol import PROTOCOL_VERSION, Heartbeat, Hello, Refuse, Result, ResultStatus
from common.report import ExecutionStatus
from tests.conftest import wait_until
from tests.graphs import independent
from worker.executor import TaskQuantumExecutor


class _Run:
    """execute() in a thread, so a test can talk to the broker while it runs."""

    def __init__(self, butler: Butler, n: int = 8) -> None:
        self.executor = MPGraphExecutor(2, 30.0, TaskQuantumExecutor())
        self.error: BaseException | None = None
        graph = independent(n, "sleep", seconds=0.15)
        self.thread = threading.Thread(target=self._run, args=(graph, butler))
        self.thread.start()
        wait_until(self._bound, 30, "the broker to bind its socket")

    def _run(self, graph: object, butler: Butler) -> None:
        try:
            self.executor.execute(graph, butler)  # type: ignore[arg-type]
        except BaseException as e:
            self.error = e

    def _bound(self) -> bool:
        ep = self.executor.endpoint
        return ep is not None and Path(ep.removeprefix("ipc://")).exists()

    @property
    def endpoint(self) -> str:
        assert self.executor.endpoint is not None
        return self.executor.endpoint

    def join(self) -> None:
        self.thread.join(60)
        assert not self.thread.is_alive()
        assert self.error is None, self.error
        assert self.executor.getReport().status is ExecutionStatus.SUCCESS


@pytest.fixture
def zctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def _dealer(ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> zmq.Socket[bytes]:
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    return s


def test_junk_frames_and_unknown_workers_are_dropped_while_the_run_completes(
    butler: Butler, zctx: zmq.Context[zmq.Socket[bytes]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="broker.server")
    run = _Run(butler)
    s = _dealer(zctx, run.endpoint)
    rng = random.Random(7)
    # Random bytes, truncated frames, multi-part messages, results from an unknown worker
    for _ in range(300):
        s.send(rng.randbytes(rng.randrange(1, 200)))
    s.send(encode(Hello(pid=1, host="x", slots=1))[:-2])
    s.send_multipart([b"one", b"two"])
    stray = Result("q0", 1, ResultStatus.SUCCESS, 0, None, None, None, 0.0, 0.0, 0.0, None, None)
    s.send(encode(stray))
    s.send(encode(Heartbeat()))
    run.join()
    assert "dropping bad frame" in caplog.text
    assert "from unknown worker" in caplog.text
    assert "dropping a message of 3 frames" in caplog.text
    # the stray result was not applied: q0 ran on a real worker
    assert run.executor.getReport().details("q0").worker in {"w1", "w2"}


def test_worker_of_another_protocol_version_is_refused_with_a_reason(
    butler: Butler, zctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    run = _Run(butler, n=4)
    s = _dealer(zctx, run.endpoint)
    s.send(encode(Hello(pid=1, host="elsewhere", slots=1), version=PROTOCOL_VERSION + 1))
    assert s.poll(10_000), "no answer to a HELLO of another version"
    answer = decode(s.recv())
    assert isinstance(answer, Refuse)
    assert f"protocol version {PROTOCOL_VERSION + 1}" in answer.reason
    run.join()
    assert {d.worker for d in run.executor.getReport().quantaDetails.values()} <= {"w1", "w2"}
