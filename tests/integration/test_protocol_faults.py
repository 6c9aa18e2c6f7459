"""Garbage and strangers on the broker socket: logged and dropped, the run completes."""

from __future__ import annotations

import logging
import random
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq

from broker import MPGraphExecutor
from broker.core.state import QState
from broker.drivers.zmq_server import BrokerServer, Serving
from common.butler import Butler
from common.codec import decode, encode
from common.config import ExecutionConfig
from common.errors import ZmpexecError
from common.framing import HEADER
from common.protocol import (
    PROTOCOL_VERSION,
    Heartbeat,
    Hello,
    Ready,
    Refuse,
    Result,
    ResultStatus,
)
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


@pytest.fixture
def dealer(
    zctx: zmq.Context[zmq.Socket[bytes]],
) -> Iterator[Callable[[str], zmq.Socket[bytes]]]:
    """Connects DEALER sockets to an endpoint; closes every one of them at teardown."""
    made: list[zmq.Socket[bytes]] = []

    def connect(endpoint: str) -> zmq.Socket[bytes]:
        s = zctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(endpoint)
        made.append(s)
        return s

    yield connect
    for s in made:
        s.close(linger=0)


def test_junk_frames_and_unknown_workers_are_dropped_while_the_run_completes(
    butler: Butler, dealer: Callable[[str], zmq.Socket[bytes]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="broker.drivers.zmq_server")
    run = _Run(butler)
    s = dealer(run.endpoint)
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
    assert "not a registered worker" in caplog.text
    assert "dropping a message of 3 frames" in caplog.text
    # the stray result was not applied: q0 ran on a real worker
    assert run.executor.getReport().details("q0").worker in {"w1", "w2"}


def test_garbage_and_strangers_on_the_executor_link_are_dropped_while_the_run_completes(
    butler: Butler, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="broker")
    run = _Run(butler, n=12)
    path = run.endpoint.removeprefix("ipc://") + ".exec"
    wait_until(lambda: Path(path).exists(), 30, "the executor link to listen")
    rng = random.Random(11)

    def stranger(payload: bytes) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(path)
            s.sendall(payload)

    # Random bytes, a length far beyond the limit, undecodable frames, a READY naming a
    # worker with the wrong pid, a result from a link that never said READY, a cut frame
    for _ in range(50):
        stranger(rng.randbytes(rng.randrange(1, 300)))
    for _ in range(200):  # many of one kind: logged once a second, not once each
        stranger(HEADER.pack(2**31) + b"x" * 10)
    stranger(b"".join(HEADER.pack(20) + rng.randbytes(20) for _ in range(20)))
    stranger(_framed(encode(Ready(worker_id="w1", pid=1, generation=9))))
    stray = Result("q0", 1, ResultStatus.SUCCESS, 0, None, None, None, 0.0, 0.0, 0.0, None, None)
    stranger(_framed(encode(stray)))
    stranger(_framed(encode(Heartbeat()))[:-1])
    run.join()
    assert 1 <= caplog.text.count("announced") <= 10
    assert "dropping bad frame" in caplog.text
    assert "no worker w1 with pid 1" in caplog.text
    assert "Result before READY" in caplog.text
    # the stray result was not applied: q0 ran on a real worker
    assert run.executor.getReport().details("q0").worker in {"w1", "w2"}


def _framed(frame: bytes) -> bytes:
    return HEADER.pack(len(frame)) + frame


def test_worker_of_another_protocol_version_is_refused_with_a_reason(
    butler: Butler, dealer: Callable[[str], zmq.Socket[bytes]]
) -> None:
    run = _Run(butler, n=4)
    s = dealer(run.endpoint)
    s.send(encode(Hello(pid=1, host="elsewhere", slots=1), version=PROTOCOL_VERSION + 1))
    assert s.poll(10_000), "no answer to a HELLO of another version"
    answer = decode(s.recv())
    assert isinstance(answer, Refuse)
    assert f"protocol version {PROTOCOL_VERSION + 1}" in answer.reason
    run.join()
    assert {d.worker for d in run.executor.getReport().quantaDetails.values()} <= {"w1", "w2"}


def test_broker_survives_thousands_of_fuzzed_frames(
    butler: Butler, dealer: Callable[[str], zmq.Socket[bytes]]
) -> None:
    # Given a running broker and several hostile sockets (unknown identities)
    run = _Run(butler, n=12)
    socks = [dealer(run.endpoint) for _ in range(4)]
    rng = random.Random(2024)
    valid = [
        encode(Hello(pid=1, host="h", slots=1)),
        encode(Heartbeat()),
        encode(
            Result("q1", 1, ResultStatus.SUCCESS, 0, None, None, None, 0.0, 0.0, 0.0, None, None)
        ),
    ]
    sent = 0
    # When thousands of random, mutated, truncated, oversized and wrong-version frames arrive
    for i in range(4000):
        s = socks[i % len(socks)]
        kind = rng.randrange(5)
        if kind == 0:
            frame = rng.randbytes(rng.randrange(0, 512))
        elif kind == 1:
            mutated = bytearray(rng.choice(valid))
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            frame = bytes(mutated)
        elif kind == 2:
            full = rng.choice(valid)
            frame = full[: rng.randrange(len(full))]
        elif kind == 3:
            frame = encode(Heartbeat(), version=rng.randrange(2, 1000))
        else:
            frame = rng.choice(valid[1:])  # well-formed, from a worker nobody registered
        s.send(frame)
        sent += 1
    for s in socks[:2]:
        s.send(b"\x00" * (65 * 1024 * 1024))  # beyond the codec's frame limit
        sent += 1
    # Then the run still completes correctly
    run.join()
    assert sent >= 4000
    assert run.executor.getReport().counts()[ExecutionStatus.SUCCESS] == 12


def test_a_broker_that_cannot_secure_its_socket_reports_the_real_error(tmp_path: Path) -> None:
    # Given a tcp endpoint whose CURVE key directory holds no keys
    graph = independent(2)
    config = ExecutionConfig(num_workers=1, local_workers=0, endpoint="tcp://127.0.0.1:0")
    serving = Serving("tcp://127.0.0.1:0", tmp_path / "logs", b"", keys_dir=tmp_path / "nokeys")
    server = BrokerServer(graph, config, serving)
    # When it runs, the error names the missing keys (not a bookkeeping error of the cleanup)
    with pytest.raises(ZmpexecError, match="nokeys"):
        server.run()
    # and the run is stopped in order: every quantum cancelled
    assert server.core.over and server.core.state.count(QState.CANCELLED) == 2
