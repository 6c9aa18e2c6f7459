"""One command-line form of the agent's configuration, and one set of exit codes."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

from common.exits import ExitCode
from worker.launch import AgentConfig, agent_command


def test_agent_config_round_trips_through_its_argv() -> None:
    full = AgentConfig("tcp://h:5", 12, 7.5, logging.DEBUG, 3, Path("/run/curve"))
    assert AgentConfig.from_argv(full.to_argv()) == full
    minimal = AgentConfig("ipc:///tmp/zq/b.sock")
    assert minimal.to_argv() == ["--endpoint", "ipc:///tmp/zq/b.sock"]
    assert AgentConfig.from_argv(minimal.to_argv()) == minimal


def test_agent_command_runs_the_agent_module_in_this_interpreter() -> None:
    argv = agent_command(AgentConfig("ipc:///x", parent_pid=4))
    assert argv[:3] == [sys.executable, "-m", "worker.agent"]
    assert argv[3:] == ["--endpoint", "ipc:///x", "--parent-pid", "4"]


def test_exit_codes_are_named_once() -> None:
    assert ExitCode.for_signal(signal.SIGTERM) == 143
    assert ExitCode.for_signal(signal.SIGINT) == 130
    assert ExitCode.describe(ExitCode.REFUSED) == "refused by the broker (see its log)"
    assert ExitCode.describe(ExitCode.PARENT_GONE) == "lost the process that started it"
    assert ExitCode.describe(77) == "exited with code 77"
