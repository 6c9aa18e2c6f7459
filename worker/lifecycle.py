"""Process-lifetime helpers shared by agent and executor child: die with the parent, kill a
process group, describe how a process ended. Must not hold state.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
from collections.abc import MutableMapping
from pathlib import Path

__all__ = [
    "describe_exit",
    "die_with_parent",
    "kill_group",
    "oom_kills",
    "single_threaded_libraries",
]

# Thread-pool sizes of the numerical libraries a task may load (BLAS, OpenMP, numexpr...),
# read when each library loads.
THREAD_COUNT_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "GOTO_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "NUMBA_NUM_THREADS",
)

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask Linux to send ``sig`` when our parent dies (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        # The C library this process already has loaded: ``ctypes.util.find_library`` would
        # run ``ldconfig -p`` (a subprocess) at every agent and executor start.
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            logger.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    except OSError as e:
        logger.warning("cannot set parent-death signal: %s", e)


def single_threaded_libraries(env: MutableMapping[str, str]) -> None:
    """One thread per numerical library in ``env`` wherever the user did not choose a count.

    Executors run one quantum per core: a BLAS or OpenMP pool per core in each of them
    oversubscribes the host (an idle OpenBLAS pool even spins beside the task). As LSST's
    executor and Dask's nanny do; a count set in the environment is kept.
    """
    for name in THREAD_COUNT_VARIABLES:
        env.setdefault(name, "1")


def kill_group(pid: int) -> None:
    """SIGKILL the process group led by ``pid`` (grandchildren included), else just ``pid``."""
    try:
        os.killpg(pid, signal.SIGKILL)
        return
    except (ProcessLookupError, PermissionError):
        pass
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _oom_counter_files(pid: int, root: Path) -> list[Path]:
    """cgroup v2 ``memory.events`` or v1 ``memory.oom_control`` of ``pid``'s memory cgroup."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return []
    files = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        if controllers == "":
            files.append(root / rel / "memory.events")
        elif "memory" in controllers.split(","):
            files.append(root / "memory" / rel / "memory.oom_control")
    return files


def oom_kills(pid: int, root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """How many processes the kernel's OOM killer has killed in ``pid``'s memory cgroup
    (None where no counter is readable). Compared before and after a SIGKILL nobody sent."""
    for f in _oom_counter_files(pid, root):
        try:
            for line in f.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            continue
    return None


def describe_exit(exit_code: int) -> str:
    """'killed by signal 11 (SIGSEGV)' or 'exited with code 3'."""
    if exit_code < 0:
        try:
            name = signal.Signals(-exit_code).name
        except ValueError:
            name = "unknown signal"
        return f"killed by signal {-exit_code} ({name})"
    return f"exited with code {exit_code}"
