"""Finding and checking the worker agents a run in this process started (used by
``scripts/bench/faults.py`` and the fault tests)."""

from __future__ import annotations

import psutil

__all__ = ["gone", "worker_agents"]


def worker_agents(broker: psutil.Process | None = None) -> list[psutil.Process]:
    """The worker agents of ``broker`` (default: this process, a broker running in it)."""
    out = []
    try:
        children = (broker or psutil.Process()).children()
    except psutil.Error:
        return []  # that broker is gone
    for p in children:
        try:
            if "worker.agent" in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:
            pass  # exited (a zombie until the broker reaps it): not a worker to act on
    return out


def gone(p: psutil.Process) -> bool:
    try:
        return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
