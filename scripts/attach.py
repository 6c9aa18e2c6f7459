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

from worker.agent import EXIT_BROKER_LOST, EXIT_NO_BROKER, EXIT_OK, EXIT_REFUSED

__all__ = ["run_workers"]

_WHY = {
    EXIT_REFUSED: "refused by the broker (see its log)",
    EXIT_BROKER_LOST: "lost its broker",
    EXIT_NO_BROKER: "found no broker",
}


def run_workers(endpoint: str, n: int, keys_dir: Path | None, wait_s: float) -> int:
    """0 when every agent ended normally, 1 otherwise, 130/143 when interrupted."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
    argv = [
        sys.executable,
        "-m",
        "worker.agent",
        "--endpoint",
        endpoint,
        "--parent-pid",
        str(os.getpid()),
        "--startup-timeout",
        str(wait_s),
        "--log-level",
        str(logging.getLogger().getEffectiveLevel()),
    ]
    if keys_dir is not None:
        argv += ["--keys-dir", str(keys_dir)]
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
        if code != EXIT_OK and not interrupted:
            print(
                f"worker pid {a.pid}: {_WHY.get(code, f'exited with code {code}')}", file=sys.stderr
            )
    if interrupted:
        return 143 if interrupted[0] == signal.SIGTERM else 130
    return 0 if all(c == EXIT_OK for c in codes) else 1
