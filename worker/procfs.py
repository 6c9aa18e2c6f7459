"""What Linux's /proc says about memory: a process's high-water mark (``VmHWM``), its
resident pages (``statm``), its children, and the resident memory of a whole process tree.
Parsers are pure; readers take the /proc root, so tests hand them a directory of their own.
"""

from __future__ import annotations

import os

import psutil

__all__ = [
    "PAGE_KB",
    "children_of",
    "own_rss_kb",
    "parse_children",
    "parse_hwm_kb",
    "parse_statm_resident",
    "tree_rss_kb",
]

PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def parse_hwm_kb(status: bytes) -> int | None:
    """``VmHWM`` of a ``/proc/PID/status`` text in KiB (None if it has none: a kernel thread,
    a zombie, or a read cut short)."""
    at = status.find(b"\nVmHWM:")
    if at < 0:
        return None
    end = status.find(b"\n", at + 7)
    fields = status[at + 7 : end if end >= 0 else len(status)].split()
    if len(fields) != 2 or fields[1] != b"kB" or not fields[0].isdigit():
        return None
    return int(fields[0])


def parse_statm_resident(statm: bytes) -> int:
    """Resident pages in a ``/proc/PID/statm`` text (its second field)."""
    return int(statm.split()[1])


def own_rss_kb() -> int:
    """This process's resident memory now, KiB (0 if /proc cannot say)."""
    try:
        return parse_statm_resident(_read("/proc/self/statm")) * PAGE_KB
    except (OSError, ValueError, IndexError):
        return 0


def parse_children(text: bytes) -> list[int]:
    """The pids of a ``/proc/PID/task/TID/children`` text."""
    return [int(p) for p in text.split()]


def _read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 65536)
    finally:
        os.close(fd)


def children_of(pid: int, proc: str = "/proc") -> list[int]:
    """Direct children of ``pid`` (every thread's). FileNotFoundError where the kernel does
    not list children (no CONFIG_PROC_CHILDREN) or ``pid`` is gone."""
    kids: list[int] = []
    for tid in os.listdir(f"{proc}/{pid}/task"):
        try:
            kids += parse_children(_read(f"{proc}/{pid}/task/{tid}/children"))
        except ProcessLookupError:
            continue  # the thread ended in between
    return kids


def tree_rss_kb(pid: int, proc: str = "/proc") -> int | None:
    """Resident memory of ``pid`` and all its descendants in KiB (None if ``pid`` is gone).

    Walks the tree through each process's children lists: a handful of small reads per
    process, whatever else runs on the host. Pages two processes share count in both, as in
    every sum of RSS. Falls back to psutil (a scan of every process) where the kernel does
    not list children.
    """
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            pages = parse_statm_resident(_read(f"{proc}/{p}/statm"))
            kids = children_of(p, proc)
        except (FileNotFoundError, ProcessLookupError):
            if p != pid:
                continue  # a descendant that ended in between holds no memory
            return _psutil_tree_rss_kb(pid) if os.path.exists(f"{proc}/{pid}") else None
        except (OSError, ValueError, IndexError):
            continue
        total += pages * PAGE_KB
        todo += kids
    return total


def _psutil_tree_rss_kb(pid: int) -> int | None:
    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
    except psutil.Error:
        return None
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass  # ended in between
    return total // 1024
