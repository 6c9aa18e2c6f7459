"""The worker agent as a process against a scripted broker socket: its exit codes say why it
stopped."""

from __future__ import annotations

import pickle
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq

from common.butler import Butler
from common.codec import decode, encode
from common.exits import ExitCode
from common.protocol import Hello, Ready, Refuse, Welcome
from worker.executor import TaskQuantumExecutor
from worker.launch import AgentConfig, agent_command, agent_env

Start = Callable[[AgentConfig], "subprocess.Popen[bytes]"]


@pytest.fixture
def router() -> Iterator[tuple[zmq.Socket[bytes], str]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    with tempfile.TemporaryDirectory(prefix="zq", dir="/tmp") as d:
        endpoint = f"ipc://{d}/b.sock"
        sock.bind(endpoint)
        yield sock, endpoint
        sock.close(linger=0)
    ctx.term()


@pytest.fixture
def start() -> Iterator[Callable[[AgentConfig], subprocess.Popen[bytes]]]:
    """Starts agent processes; every one is killed and reaped at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def _start(config: AgentConfig) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(agent_command(config), env=agent_env(), stderr=subprocess.PIPE)
        started.append(proc)
        return proc

    yield _start
    for proc in started:
        proc.kill()
        proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


def _recv(sock: zmq.Socket[bytes], kind: type) -> bytes:
    """The identity of the peer that sent the next ``kind`` message."""
    while True:
        assert sock.poll(30_000), f"no {kind.__name__} from the agent"
        identity, frame = sock.recv_multipart()
        if isinstance(decode(frame), kind):
            return identity


def test_agent_refused_after_welcome_exits_with_the_refused_code(
    router: tuple[zmq.Socket[bytes], str], tmp_path: Path, start: Start
) -> None:
    # Given an agent that completed the handshake and is READY
    sock, endpoint = router
    agent = start(AgentConfig(endpoint))
    identity = _recv(sock, Hello)
    blob = pickle.dumps((TaskQuantumExecutor(), Butler(tmp_path / "repo")))
    welcome = Welcome("w1", 0.5, 10, blob, str(tmp_path), [], None, None, None)
    sock.send_multipart([identity, encode(welcome)])
    _recv(sock, Ready)
    # When the broker refuses it (it was written off)
    sock.send_multipart([identity, encode(Refuse("not a registered worker of this run"))])
    # Then it exits with the named code, not 0
    assert agent.wait(30) == ExitCode.REFUSED


def test_agent_whose_parent_is_gone_exits_with_the_parent_gone_code(
    router: tuple[zmq.Socket[bytes], str], start: Start
) -> None:
    # Given an agent told its parent is a process that is not (any more) its parent
    _, endpoint = router
    gone = subprocess.Popen(["true"])
    gone.wait()
    agent = start(AgentConfig(endpoint, parent_pid=gone.pid))
    assert agent.wait(30) == ExitCode.PARENT_GONE


def test_arming_the_parent_death_signal_starts_no_process() -> None:
    # Given a process where starting a subprocess is an error
    code = (
        "import ctypes, subprocess\n"
        "def refuse(*args, **kwargs):\n"
        "    raise SystemExit('a subprocess was started')\n"
        "subprocess.Popen.__init__ = refuse\n"
        "from worker.lifecycle import die_with_parent\n"
        "die_with_parent()\n"
        "sig = ctypes.c_int()\n"
        "assert ctypes.CDLL(None).prctl(2, ctypes.byref(sig), 0, 0, 0) == 0\n"  # PR_GET_PDEATHSIG
        "print(sig.value)\n"
    )
    # When it arms its parent-death signal (as every agent and executor child does at start)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=agent_env(), timeout=60
    )
    # Then the signal is armed and no process (ldconfig) was started for it
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == signal.SIGKILL
