"""Tasks and graphs for fault drills and benchmarks (``scripts/faultbench.py``): quanta that
sleep, and quanta that journal each run so a drill can count lost and repeated work. Workers
resolve them by name (``examples.drills:<task>``)."""

from __future__ import annotations

import os
import time
from typing import Any

from common.graph import QuantumGraph
from common.quantum import Quantum

__all__ = ["journaled", "sleep", "sleepers"]


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


def sleepers(n: int, seconds: float, prefix: str = "s") -> QuantumGraph:
    """``n`` independent quanta that sleep ``seconds`` each."""
    return QuantumGraph.from_quanta(
        [
            Quantum(
                id=f"{prefix}{i}",
                task_label="sleep",
                task="examples.drills:sleep",
                config={"seconds": seconds},
                outputs={"out": f"{prefix}{i}"},
            )
            for i in range(n)
        ]
    )
