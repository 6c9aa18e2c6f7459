"""An attempt's own peak memory and CPU time, measured in the process that runs it, so a warm
executor reports each quantum as a fresh process would. Must not sample: the agent does.

What is counted (the rule every RESULT keeps):

- ``max_rss_kb``, the largest of
  - this process's resident high-water mark since the attempt started (reset at its start by
    writing 5 to ``/proc/self/clear_refs``; read from ``ru_maxrss`` or ``VmHWM``);
  - the peak of the largest child process the task started and reaped (waited for) during the
    attempt, when it beats every child this process reaped before (``RUSAGE_CHILDREN`` keeps
    only the largest one, for the process's life);
  - the process tree's resident memory as the agent sampled it during the attempt (``watched``:
    children still running, or several at once, are seen this way; sampled only while the
    attempt has a memory request).
  Where /proc does not allow the reset, the process's lifetime peaks (``ru_maxrss`` of self
  and of reaped children) stand in.
- ``cpu_s``: user + system CPU of this process (every thread) during the attempt, plus that of
  the child processes reaped during it (``getrusage`` deltas). Children still running at its
  end are not counted.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable

from worker.procfs import parse_hwm_kb

__all__ = ["AttemptMeter", "Measured"]

_SELF, _CHILDREN = resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN
_getrusage, _write = resource.getrusage, os.write  # per attempt: no attribute look-ups
_RESET_HWM = b"5"  # clear_refs: reset the resident high-water mark to the current RSS
_STATUS_BYTES = 8192
_UNOPENED, _UNAVAILABLE = -2, -1  # file descriptor states

Measured = tuple[int, float]  # (peak KiB, CPU seconds) of one attempt


class AttemptMeter:
    """``start`` at an attempt's start, ``stop`` at its end, in the process that runs it (made
    there: the /proc files it keeps open are its own). ``watched`` gives the tree peak the
    agent sampled for the running attempt (0 when it sampled none).

    Per attempt: one write to ``clear_refs`` and three ``getrusage`` calls (the reaped
    children's figures at an attempt's start are those at the previous one's end: this
    process reaps nothing between attempts). The mark is read from ``ru_maxrss``, which is the
    mark itself where the kernel's lifetime figure adds nothing to it (a forked process: the
    executor child); where it does (an exec'd process whose pre-exec image was bigger: a Dask
    worker's child), from ``/proc/self/status``.
    """

    def __init__(self, watched: Callable[[], int] | None = None) -> None:
        self._watched = watched
        self._clear_fd = self._status_fd = _UNOPENED
        self._mark_in_rusage = False
        self._cpu0 = 0.0
        self._children_cpu0 = 0.0
        self._children_peak0 = 0

    def start(self) -> None:
        if self._clear_fd == _UNOPENED:
            self._open()
        if self._clear_fd >= 0:
            try:
                _write(self._clear_fd, _RESET_HWM)
            except OSError:
                self.close()  # lifetime peaks from now on
        own = _getrusage(_SELF)
        self._cpu0 = own.ru_utime + own.ru_stime + self._children_cpu0

    def stop(self) -> Measured:
        own, children = _getrusage(_SELF), _getrusage(_CHILDREN)
        children_cpu = children.ru_utime + children.ru_stime
        cpu = own.ru_utime + own.ru_stime + children_cpu - self._cpu0
        self._children_cpu0 = children_cpu
        hwm = own.ru_maxrss if self._mark_in_rusage else self._status_hwm_kb()
        if hwm is None:
            peak = max(own.ru_maxrss, children.ru_maxrss)
        else:
            reaped = children.ru_maxrss if children.ru_maxrss > self._children_peak0 else 0
            peak = max(hwm, reaped)
        self._children_peak0 = children.ru_maxrss
        if self._watched is not None:
            peak = max(peak, self._watched())
        return int(peak), max(0.0, cpu)

    def close(self) -> None:
        for fd in (self._clear_fd, self._status_fd):
            if fd >= 0:
                os.close(fd)
        self._clear_fd = self._status_fd = _UNAVAILABLE
        self._mark_in_rusage = False

    def _open(self) -> None:
        """Open this process's /proc files, and find out where its mark is read."""
        children = resource.getrusage(_CHILDREN)
        self._children_cpu0 = children.ru_utime + children.ru_stime
        self._children_peak0 = children.ru_maxrss
        try:
            self._status_fd = os.open("/proc/self/status", os.O_RDONLY | os.O_CLOEXEC)
            self._clear_fd = os.open("/proc/self/clear_refs", os.O_WRONLY | os.O_CLOEXEC)
            os.write(self._clear_fd, _RESET_HWM)
        except OSError:
            self.close()
            return
        lifetime = resource.getrusage(_SELF).ru_maxrss
        mark = self._status_hwm_kb()
        # Just reset, the mark is the current size: a lifetime figure above it is not the mark.
        self._mark_in_rusage = mark is not None and lifetime <= mark

    def _status_hwm_kb(self) -> int | None:
        """This process's high-water mark since ``start`` (None where it was not reset)."""
        if self._clear_fd < 0:
            return None
        try:
            # pread at 0 has the kernel write the status afresh: no reopen per attempt
            return parse_hwm_kb(os.pread(self._status_fd, _STATUS_BYTES, 0))
        except OSError:
            return None
