"""Each attempt's own peak memory and CPU time, and the agent's enforcement of its memory
request: a real agent and executor child against a scripted broker socket."""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from common.butler import Butler
from common.codec import decode, encode
from common.protocol import (
    Assign,
    ExecutorExited,
    Heartbeat,
    Hello,
    Ready,
    Result,
    ResultStatus,
    Welcome,
)
from common.quantum import Quantum
from common.report import Reason
from worker.executor import TaskQuantumExecutor
from worker.launch import AgentConfig, agent_command, agent_env
from worker.runner import run_quantum

MIB = 1024  # KiB


class ScriptedBroker:
    """A ROUTER that plays the broker for one agent: WELCOME, ASSIGNs to its executor child,
    heartbeats while it waits for the outcome of each."""

    def __init__(self, sock: zmq.Socket[bytes], log_dir: Path) -> None:
        self._sock = sock
        self._log_dir = log_dir
        self._agent = self._child = b""
        self._seq = 0

    def welcome(self, blob: bytes, enforce: str) -> None:
        self._agent, _ = self._next((Hello,))
        welcome = Welcome(
            "w1", 0.5, 20, blob, str(self._log_dir), ["tests.tasks"], None, None, None, enforce
        )
        self._sock.send_multipart([self._agent, encode(welcome)])
        self._next((Ready,))

    def run(self, task: str, *, memory_mb: float | None = None, **config: Any) -> Any:
        """The RESULT (from the child) or EXECUTOR_EXITED (from the agent) of one quantum."""
        self._seq += 1
        quantum = Quantum(f"q{self._seq}", task, f"tests.tasks:{task}", config=config)
        assign = Assign(quantum, 1, None, self._seq, memory_mb=memory_mb)
        self._sock.send_multipart([self._child, encode(assign)])
        _, msg = self._next((Result, ExecutorExited))
        if isinstance(msg, ExecutorExited):
            self._next((Ready,))  # its replacement
        return msg

    def _next(self, kinds: tuple[type, ...], timeout_s: float = 60.0) -> tuple[bytes, Any]:
        """The next message of one of ``kinds`` (and who sent it); the agent is sent a
        heartbeat meanwhile, as a broker would."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._agent:
                self._sock.send_multipart([self._agent, encode(Heartbeat())])
            if not self._sock.poll(200):
                continue
            identity, frame = self._sock.recv_multipart()
            msg = decode(frame)
            if isinstance(msg, Ready):
                self._child = identity
            if isinstance(msg, kinds):
                return identity, msg
        raise AssertionError(f"no {[k.__name__ for k in kinds]} within {timeout_s}s")


@pytest.fixture
def agent_stderr(tmp_path: Path) -> Path:
    return tmp_path / "agent.err"


@pytest.fixture
def broker(tmp_path: Path, agent_stderr: Path) -> Iterator[ScriptedBroker]:
    """An agent (and its child) working for a scripted broker; killed and reaped after."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    with tempfile.TemporaryDirectory(prefix="zq", dir="/tmp") as d, agent_stderr.open("wb") as err:
        endpoint = f"ipc://{d}/b.sock"
        sock.bind(endpoint)
        agent = subprocess.Popen(agent_command(AgentConfig(endpoint)), env=agent_env(), stderr=err)
        try:
            yield ScriptedBroker(sock, tmp_path / "logs")
        finally:
            agent.kill()
            agent.wait()
            sock.close(linger=0)
    ctx.term()


@pytest.fixture
def blob(tmp_path: Path) -> bytes:
    return pickle.dumps((TaskQuantumExecutor(), Butler(tmp_path / "repo")))


def test_a_small_quantum_after_a_big_one_on_a_warm_executor_reports_its_own_peak(
    broker: ScriptedBroker, blob: bytes
) -> None:
    # Given an executor child that ran a quantum writing 200 MiB
    broker.welcome(blob, "kill")
    big = broker.run("touch", mb=200)
    assert isinstance(big, Result) and big.status is ResultStatus.SUCCESS
    assert big.max_rss_kb is not None and big.max_rss_kb >= 200 * MIB
    # When the same child runs one writing 10 MiB
    small = broker.run("touch", mb=10)
    # Then that one reports its own peak, not the child's lifetime one
    assert isinstance(small, Result) and small.status is ResultStatus.SUCCESS
    assert small.max_rss_kb is not None and small.max_rss_kb >= 10 * MIB
    assert small.max_rss_kb < big.max_rss_kb - 150 * MIB


def test_the_peak_of_a_child_process_the_task_waited_for_counts(
    broker: ScriptedBroker, blob: bytes
) -> None:
    broker.welcome(blob, "kill")
    result = broker.run("touch_in_child", mb=150)
    assert isinstance(result, Result) and result.status is ResultStatus.SUCCESS
    assert result.max_rss_kb is not None and result.max_rss_kb >= 150 * MIB
    assert result.cpu_s is not None and result.cpu_s > 0.0  # the child's CPU counts too


@pytest.mark.parametrize("task", ["touch_and_hold", "touch_in_child"])
def test_a_quantum_over_its_memory_request_is_killed_with_reason_memory(
    broker: ScriptedBroker, blob: bytes, task: str
) -> None:
    # Given an agent that kills quanta over their request
    broker.welcome(blob, "kill")
    # When a quantum (or a process it started) outgrows its request of 100 MiB
    t0 = time.monotonic()
    out = broker.run(task, memory_mb=100, mb=300, seconds=60)
    # Then it is killed at once, reported as a memory failure naming its peak and request
    assert isinstance(out, ExecutorExited) and out.running
    assert out.status is ResultStatus.FAILURE and out.reason is Reason.MEMORY
    assert out.max_rss_kb is not None and out.max_rss_kb > 100 * MIB
    assert "over its request of 100 MiB" in out.detail
    # what it used beyond its executor's own (the interpreter and task modules) is named
    # (killed once past 100 + 16 MiB: named rounded, so 116 at least)
    used = re.match(r"used ([\d,]+) MiB, over its request of 100 MiB; killed", out.detail)
    assert used is not None and 116 <= int(used.group(1).replace(",", "")) <= out.max_rss_kb / 1024
    assert time.monotonic() - t0 < 30
    # and the worker goes on serving with a fresh child
    after = broker.run("touch", mb=1, memory_mb=100)
    assert isinstance(after, Result) and after.status is ResultStatus.SUCCESS


@pytest.mark.parametrize("enforce", ["warn", "off"])
def test_warn_and_off_let_a_quantum_over_its_request_finish(
    broker: ScriptedBroker, blob: bytes, agent_stderr: Path, enforce: str
) -> None:
    broker.welcome(blob, enforce)
    result = broker.run("touch_and_hold", memory_mb=50, mb=200, seconds=0.5)
    assert isinstance(result, Result) and result.status is ResultStatus.SUCCESS
    assert result.max_rss_kb is not None and result.max_rss_kb >= 200 * MIB
    again = broker.run("touch_and_hold", memory_mb=50, mb=200, seconds=0.3)
    assert isinstance(again, Result) and again.status is ResultStatus.SUCCESS
    # the agent warned while each held its memory, before it finished
    warnings = agent_stderr.read_text().count("over its request of 50 MiB")
    assert warnings == (2 if enforce == "warn" else 0)  # once per attempt


def test_a_memory_error_in_the_task_is_a_memory_failure(
    broker: ScriptedBroker, blob: bytes
) -> None:
    broker.welcome(blob, "kill")
    result = broker.run("out_of_memory")
    assert isinstance(result, Result) and result.status is ResultStatus.FAILURE
    assert result.reason is Reason.MEMORY and result.exc_class == "MemoryError"


def test_cpu_time_of_a_quantum_is_its_own(broker: ScriptedBroker, blob: bytes) -> None:
    broker.welcome(blob, "kill")
    busy = broker.run("spin", seconds=0.5)
    idle = broker.run("nap", seconds=0.5)
    assert isinstance(busy, Result) and isinstance(idle, Result)
    assert busy.cpu_s is not None and idle.cpu_s is not None
    assert 0.5 <= busy.cpu_s <= min(0.6, busy.duration_s + 0.01)
    assert idle.cpu_s < 0.1  # the spin before it is not counted again


def test_in_process_attempts_report_their_own_peak(tmp_path: Path) -> None:
    executor, butler = TaskQuantumExecutor(), Butler(tmp_path / "repo")

    def run(mb: int) -> Result:
        quantum = Quantum(f"q{mb}", "touch", "tests.tasks:touch", config={"mb": mb})
        return run_quantum(executor, butler, quantum, 1, None, in_process=True)

    big, small = run(200), run(10)
    assert big.max_rss_kb is not None and small.max_rss_kb is not None
    assert small.max_rss_kb < big.max_rss_kb - 150 * MIB
    assert os.path.exists("/proc/self/clear_refs")


def test_an_exec_d_process_reports_its_own_peak_not_its_pre_exec_image_s() -> None:
    # Given a process that started from a copy of a big one (fork, then exec: as the Dask
    # engine's executor children do), whose lifetime peak is that copy's
    code = (
        "import resource\n"
        "from worker.meter import AttemptMeter\n"
        "meter = AttemptMeter()\n"
        "meter.start()\n"
        "peak_kb, _ = meter.stop()\n"
        "print(peak_kb, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    block = b"x" * (300 << 20)
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=agent_env(),
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=os.getpid,  # forces fork + exec (no vfork)
    )
    del block
    assert out.returncode == 0, out.stderr
    peak_kb, lifetime_kb = map(int, out.stdout.split())
    # Then its attempts report their own peak
    assert lifetime_kb >= 300 * MIB
    assert peak_kb < 100 * MIB
