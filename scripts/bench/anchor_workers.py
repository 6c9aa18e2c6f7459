"""Run the shared anchors with N workers instead of their 2, without editing them: sets the
workload module's ``NUM_WORKERS`` (their runners read it) and re-binds the lower bound's
default (bound at import). Imports nothing of zmpexec, so the peers' venvs can run it by path:

    python scripts/bench/anchor_workers.py N ANCHOR_SCRIPT [ARGS...]
"""

from __future__ import annotations

import runpy
import sys
from typing import Any


def with_workers(workloads: Any, n: int) -> None:
    """Make the anchors' ``workloads`` module use ``n`` workers."""
    workloads.NUM_WORKERS = n
    bound = workloads.Workload.lower_bound
    workloads.Workload.lower_bound = lambda self, workers=n: bound(self, workers)


if __name__ == "__main__":
    import importlib

    with_workers(importlib.import_module("workloads"), int(sys.argv[1]))  # (on PYTHONPATH)
    sys.argv = sys.argv[2:]
    runpy.run_path(sys.argv[0], run_name="__main__")
