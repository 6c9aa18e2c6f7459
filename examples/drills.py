"""Tasks and graphs for fault drills and benchmarks (``scripts/bench/faults.py``): quanta that
sleep, and quanta that journal each run so a drill can count lost and repeated work. Workers
resolve them by name (``examples.drills:<task>``). Kept light: workers' forkservers preload
task modules, and a heavy one makes every executor child slower to start and to die."""

from __future__ import annotations

import os
import time
from typing import Any

__all__ = ["journaled", "sleep"]


def sleep(*, seconds: float = 0.1, **inputs: Any) -> float:
    time.sleep(seconds)
    return seconds


def journaled(
    *, repo: str, run: str, record: str, me: str, out: str, seconds: float = 0.0, **inputs: Any
) -> str:
    """Appends 'RUN <me>' to ``record`` (or 'DUP <me>' if its output ``out`` was already
    registered: a quantum that completed running twice), sleeps, returns its id."""
    from common.butler import Butler

    tag = "DUP" if Butler(repo, run).exists(out) else "RUN"
    fd = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, f"{tag} {me}\n".encode())
    os.close(fd)
    time.sleep(seconds)
    return me
