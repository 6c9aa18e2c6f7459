"""Test tasks that worker processes resolve by name (``tests.tasks:<name>``).

Each does one thing a test needs: succeed, fail, sleep, crash by signal, hang, hold the GIL,
allocate memory, write outputs, start a grandchild.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from examples.drills import journaled, sleep

__all__ = ["journaled", "sleep"]  # shared with the fault drills; the rest is the tests' own

logger = logging.getLogger(__name__)


def ok(**inputs: Any) -> str:
    """Succeeds; returns a summary of its inputs."""
    return "ok:" + ",".join(sorted(inputs))


def add(*, value: int = 0, **inputs: int) -> int:
    """Sum of its inputs plus ``value``."""
    return value + sum(inputs.values())


def fail(*, message: str = "task failed on purpose", **inputs: Any) -> None:
    raise ValueError(message)


def fail_if(*, fail_on: int | None = None, detector: int = 0, **inputs: Any) -> int:
    if fail_on is not None and detector == fail_on:
        raise RuntimeError(f"detector {detector} is bad")
    return detector


def big_failure(*, size: int = 200_000, **inputs: Any) -> None:
    raise RuntimeError("x" * size)


def crash(*, sig: int = signal.SIGSEGV, **inputs: Any) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(10)


def exit_hard(*, code: int = 7, **inputs: Any) -> None:
    os._exit(code)


def hang_with_grandchild(*, pid_file: str, **inputs: Any) -> None:
    """Starts a sleeping grandchild, records its pid, then hangs."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    Path(pid_file).write_text(str(proc.pid))
    print(f"started grandchild {proc.pid}", flush=True)
    time.sleep(300)


def hang_ignoring_alarm(**inputs: Any) -> None:
    """Takes SIGALRM over (as a task using ``signal.alarm`` for itself would), then hangs."""
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    time.sleep(300)


def nap(*, seconds: float = 0.3, **inputs: Any) -> float:
    time.sleep(seconds)
    return seconds


def hold_gil(*, seconds: float = 3.0, **inputs: Any) -> float:
    """Holds the GIL in C code (regex backtracking) for about ``seconds``."""
    t0 = time.monotonic()
    n = 18
    while time.monotonic() - t0 < seconds:
        re.match(r"(a+)+$", "a" * n + "b")  # exponential, never releases the GIL
        if time.monotonic() - t0 < seconds / 4:
            n += 1
    return time.monotonic() - t0


def chatty(*, text: str = "hello", **inputs: Any) -> str:
    print(f"stdout: {text}", flush=True)
    print(f"stderr: {text}", file=sys.stderr, flush=True)
    logger.info("logging: %s", text)
    os.system(f"echo subprocess: {text}")
    return text


def pid(**inputs: Any) -> int:
    return os.getpid()


def thread_env(*, names: list[str], **inputs: Any) -> dict[str, str | None]:
    """The task's view of the thread-count variables ``names`` (None where unset)."""
    return {name: os.environ.get(name) for name in names}


def record(*, path: str, tag: str, **inputs: Any) -> str:
    """Appends ``tag`` to a file: lets tests see execution order."""
    with open(path, "a") as f:
        f.write(tag + "\n")
    return tag


def record_then_nap(*, path: str, tag: str, seconds: float = 1.0, **inputs: Any) -> str:
    """Appends ``tag`` to a file when it starts (tests see what runs), then sleeps."""
    record(path=path, tag=tag)
    time.sleep(seconds)
    return tag


_HELD: list[bytes] = []


def allotment(**inputs: Any) -> list[float | None]:
    """What the running attempt was given (``worker.executor.allotted()``): [MiB, cores]."""
    from worker.executor import allotted

    given = allotted()
    return [given.memory_mb, None if given.cpus is None else float(given.cpus)]


def allocate(*, mb: int = 100, **inputs: Any) -> int:
    """Keeps ``mb`` MiB alive in this process (so its RSS stays high); returns the pid."""
    _HELD.append(b"x" * (mb * 1024 * 1024))
    return os.getpid()


def once_then_hang(*, marker: str, **inputs: Any) -> str:
    """The first attempt records its parent process (a Dask worker, for the dask engine's
    executor children) in ``marker`` and hangs; later attempts succeed at once."""
    path = Path(marker)
    if not path.exists():
        path.write_text(str(os.getppid()))
        time.sleep(300)
    return "ok"


def fail_once_exists(*, path: str, **inputs: Any) -> None:
    """Fails as soon as ``path`` exists (another quantum is running), at most 30 s from now."""
    deadline = time.monotonic() + 30
    while not Path(path).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    raise RuntimeError(f"failing while {path} exists")


def mark_interval(*, path: str, tag: str, seconds: float = 0.5, **inputs: Any) -> str:
    """Sleeps ``seconds``, then appends ``tag start end`` (wall clock) in one write: tests
    see which quanta ran at once."""
    start = time.time()
    time.sleep(seconds)
    with open(path, "a") as f:
        f.write(f"{tag} {start:.6f} {time.time():.6f}\n")
    return tag


def most_at_once(path: str, tags: set[str] | None = None) -> int:
    """The most intervals in ``path`` (``mark_interval``) open at one instant, of ``tags``."""
    events = []
    for line in Path(path).read_text().splitlines():
        tag, start, end = line.split()
        if tags is None or tag in tags:
            events += [(float(start), 1), (float(end), -1)]
    peak = now = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):
        now += step
        peak = max(peak, now)
    return peak


def touch(*, mb: int = 10, **inputs: Any) -> int:
    """Allocates and writes ``mb`` MiB (every page resident), then lets it go."""
    block = b"x" * (mb * 1024 * 1024)
    return len(block)


def touch_and_hold(*, mb: int = 100, seconds: float = 60.0, **inputs: Any) -> int:
    """Writes ``mb`` MiB and keeps it for ``seconds`` (for its agent to see)."""
    block = b"x" * (mb * 1024 * 1024)
    time.sleep(seconds)
    return len(block)


def touch_in_child(*, mb: int = 50, seconds: float = 0.0, **inputs: Any) -> int:
    """A child process writes ``mb`` MiB and keeps it for ``seconds``; waits for it."""
    code = f"import time; b = b'x' * ({mb} << 20); time.sleep({seconds})"
    return subprocess.run([sys.executable, "-c", code], check=True).returncode


def out_of_memory(**inputs: Any) -> None:
    raise MemoryError("cannot allocate the frame")


def spin(*, seconds: float = 0.5, **inputs: Any) -> int:
    """Busy until this process has used ``seconds`` more CPU (however busy the host is)."""
    n, until = 0, time.process_time() + seconds
    while time.process_time() < until:
        n += 1
    return n
