"""``zmpexec worker``: start N worker agents attached to a running broker, forward stop
signals to them, and exit when they do. Each agent retries (with backoff) until the broker
answers or ``wait_s`` passes, and exits when the broker's run ends.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

from common.exits import ExitCode
from worker.launch import AgentConfig, agent_command, agent_env

__all__ = ["run_workers"]


def run_workers(endpoint: str, n: int, keys_dir: Path | None, wait_s: float) -> ExitCode:
    """OK when every agent ended normally, QUANTA_FAILED otherwise, INTERRUPTED/TERMINATED
    when a signal stopped them."""
    config = AgentConfig(
        endpoint=endpoint,
        parent_pid=os.getpid(),
        startup_timeout_s=wait_s,
        log_level=logging.getLogger().getEffectiveLevel(),
        keys_dir=keys_dir,
    )
    argv, env = agent_command(config), agent_env()
    agents = [subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL) for _ in range(n)]
    print(f"{n} worker(s) attaching to {endpoint}", file=sys.stderr)
    interrupted: list[int] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        interrupted.append(signum)
        for a in agents:
            if a.poll() is None:
                a.send_signal(signal.SIGTERM)  # agents leave gracefully: GOODBYE, then exit

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    codes = [a.wait() for a in agents]
    for a, code in zip(agents, codes, strict=True):
        if code != ExitCode.OK and not interrupted:
            print(f"worker pid {a.pid}: {ExitCode.describe(code)}", file=sys.stderr)
    if interrupted:
        return ExitCode.for_signal(interrupted[0])
    return ExitCode.OK if all(c == ExitCode.OK for c in codes) else ExitCode.QUANTA_FAILED
