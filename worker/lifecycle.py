"""Process-lifetime helpers shared by agent and executor child: die with the parent, kill a
process group, describe how a process ended. Must not hold state.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import sys

__all__ = ["describe_exit", "die_with_parent", "kill_group"]

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask Linux to send ``sig`` when our parent dies (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            logger.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    except OSError as e:
        logger.warning("cannot set parent-death signal: %s", e)


def kill_group(pid: int) -> None:
    """SIGKILL the process group led by ``pid`` (grandchildren included), else just ``pid``."""
    try:
        os.killpg(pid, signal.SIGKILL)
        return
    except (ProcessLookupError, PermissionError):
        pass
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def describe_exit(exit_code: int) -> str:
    """'killed by signal 11 (SIGSEGV)' or 'exited with code 3'."""
    if exit_code < 0:
        try:
            name = signal.Signals(-exit_code).name
        except ValueError:
            name = "unknown signal"
        return f"killed by signal {-exit_code} ({name})"
    return f"exited with code {exit_code}"
