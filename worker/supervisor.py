"""The agent's executor child: started from a forkserver that preloaded the task modules,
handed ASSIGN frames over a pipe, read back, killed with its whole process group, replaced.
Runs in the agent; never speaks to the broker and never runs user code.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

import zmq

from common.protocol import Welcome
from worker.child import child_main
from worker.lifecycle import kill_group, oom_kills, rss_kb

__all__ = ["ExecutorSupervisor"]

logger = logging.getLogger(__name__)

_PRELOAD = ["worker.child", "worker.executor", "common.butler", "common.codec"]


class ExecutorSupervisor:
    """One executor child at a time, its pipe and exit sentinel registered in ``poller``.

    ``generation`` changes with every new child: events read before a replacement belong to
    the old one (its fds may be reused by the new one).
    """

    def __init__(self, welcome: Welcome, poller: zmq.Poller) -> None:
        self._welcome = welcome
        self._poller = poller
        self._mp = multiprocessing.get_context("forkserver")
        # The forkserver imports the task modules once, so a replacement child (after a
        # timeout, a crash or recycling) starts with them loaded, in milliseconds.
        self._mp.set_forkserver_preload(_PRELOAD + welcome.preload)
        self._child: BaseProcess | None = None
        self._conn: Connection | None = None
        self._oom_baseline: int | None = None
        self.quanta = 0  # quanta the current child has finished
        self.generation = 0

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    @property
    def alive(self) -> bool:
        return self._conn is not None

    def readable(self, events: dict[object, int]) -> bool:
        return self._conn is not None and self._conn.fileno() in events

    def exited(self, events: dict[object, int]) -> bool:
        return self._child is not None and self._child.sentinel in events

    def start(self) -> None:
        ours, theirs = self._mp.Pipe(duplex=True)
        w = self._welcome
        child = self._mp.Process(
            target=child_main,
            args=(theirs, w.executor, w.log_dir, w.preload, os.getpid()),
            name="zmpexec-executor",
            daemon=False,
        )
        child.start()
        theirs.close()
        self._child, self._conn = child, ours
        self._oom_baseline = oom_kills(os.getpid())  # the child shares our memory cgroup
        self.quanta = 0
        self.generation += 1
        self._poller.register(ours.fileno(), zmq.POLLIN)
        self._poller.register(child.sentinel, zmq.POLLIN)

    def stop(self) -> None:
        """Kill the child's process group (the task's own children too) and reap it."""
        child, conn = self._child, self._conn
        self._child = self._conn = None
        if child is None or conn is None:
            return
        self._poller.unregister(conn.fileno())
        self._poller.unregister(child.sentinel)
        if child.pid is not None and child.exitcode is None:
            kill_group(child.pid)
        child.join(5.0)
        conn.close()
        child.close()

    def send(self, frame: bytes) -> None:
        assert self._conn is not None, "no executor child to send to"
        self._conn.send_bytes(frame)

    def recv(self) -> bytes | None:
        """One frame from the child; None once it is gone (its sentinel tells how)."""
        if self._conn is None:
            return None
        try:
            return self._conn.recv_bytes()
        except (EOFError, OSError):
            return None

    def pending(self) -> bool:
        """The child wrote something not read yet."""
        return self._conn is not None and self._conn.poll(0)

    def exit_code(self) -> int:
        """How the (exited) child ended; a child that cannot be reaped counts as SIGKILLed."""
        assert self._child is not None
        self._child.join(1.0)
        code = self._child.exitcode
        return code if code is not None else -signal.SIGKILL

    def oom_killed(self) -> bool:
        """The kernel OOM-killed something in our memory cgroup since the child started."""
        now, before = oom_kills(os.getpid()), self._oom_baseline
        return now is not None and before is not None and now > before

    def should_recycle(self) -> bool:
        """Replace the child after N quanta or once it has grown past the RSS limit."""
        w = self._welcome
        if w.max_quanta_per_executor is not None and self.quanta >= w.max_quanta_per_executor:
            return True
        pid = self.pid
        if w.max_rss_kb is not None and pid is not None:
            rss = rss_kb(pid)
            if rss is not None and rss > w.max_rss_kb:
                logger.info("executor child uses %d KiB > %d KiB: replacing it", rss, w.max_rss_kb)
                return True
        return False
