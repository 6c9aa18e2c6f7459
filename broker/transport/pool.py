"""The local worker pool: starts agent processes, watches each through a pidfd (a death is
seen at once, in the broker's poller), kills and reaps them.

``spawn`` and ``forkserver`` start a fresh interpreter (``python -m worker.agent``), which never
re-imports the caller's ``__main__``; ``fork`` forks (before the broker's ZeroMQ context exists).
Must not speak the protocol: the server decides who is lost or replaced.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path

import psutil

from worker.agent import agent_main
from worker.launch import AgentConfig, agent_command, agent_env
from worker.lifecycle import describe_exit, kill_group

__all__ = ["LocalWorker", "WorkerPool"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class LocalWorker:
    handle: BaseProcess | subprocess.Popen[bytes]
    pid: int
    pidfd: int

    def wait(self, timeout_s: float) -> int | None:
        """Exit code (negative: signal) once exited within ``timeout_s``, else None."""
        if isinstance(self.handle, subprocess.Popen):
            try:
                return self.handle.wait(timeout_s)
            except subprocess.TimeoutExpired:
                return None
        self.handle.join(timeout_s)
        return self.handle.exitcode


class WorkerPool:
    """Local agents for one broker endpoint."""

    def __init__(
        self,
        endpoint: str,
        start_method: str,
        *,
        log_level: int = logging.WARNING,
        startup_timeout_s: float = 60.0,
        prefetch: int = 1,
        keys_dir: Path | None = None,
    ) -> None:
        self._start_method = start_method
        self._config = AgentConfig(
            endpoint=endpoint,
            parent_pid=os.getpid(),
            startup_timeout_s=startup_timeout_s,
            log_level=log_level,
            prefetch=prefetch,
            keys_dir=keys_dir,
        )
        self._by_fd: dict[int, LocalWorker] = {}
        self._killed: set[int] = set()
        self.started = 0

    def _start_one(self) -> BaseProcess | subprocess.Popen[bytes]:
        if self._start_method == "fork":
            proc = multiprocessing.get_context("fork").Process(
                target=agent_main, args=(self._config,), name="zmpexec-worker"
            )
            proc.start()
            return proc
        argv = agent_command(self._config)
        return subprocess.Popen(argv, env=agent_env(), stdin=subprocess.DEVNULL, process_group=0)

    def spawn_one(self) -> int:
        """Start one agent; its pid. Raises OSError when no process can be started."""
        handle = self._start_one()
        assert handle.pid is not None
        try:
            pidfd = os.pidfd_open(handle.pid)
        except OSError:  # (out of descriptors) a process we cannot watch must not run on
            kill_group(handle.pid)
            LocalWorker(handle, handle.pid, -1).wait(5.0)
            raise
        w = LocalWorker(handle, handle.pid, pidfd)
        self._by_fd[w.pidfd] = w
        self.started += 1
        return w.pid

    def pidfds(self) -> list[int]:
        return list(self._by_fd)

    def pids(self) -> set[int]:
        return {w.pid for w in self._by_fd.values()}

    def __len__(self) -> int:
        return len(self._by_fd)

    def reap(self, pidfd: int) -> tuple[int, int, bool] | None:
        """The (pid, exit code, killed by us) of the worker behind a readable pidfd, now
        forgotten."""
        w = self._by_fd.pop(pidfd, None)
        if w is None:
            return None
        code = w.wait(1.0)
        code = -signal.SIGKILL if code is None else code
        os.close(w.pidfd)
        if isinstance(w.handle, BaseProcess):
            w.handle.close()
        logger.info("worker process %d %s", w.pid, describe_exit(code))
        killed = w.pid in self._killed
        self._killed.discard(w.pid)
        return w.pid, code, killed

    def kill(self, pid: int) -> None:
        """SIGKILL a worker with everything it started: the agent's process group (agent and
        forkserver) and the group of every descendant (the executor child leads its own, with
        the task's processes). Works on a stopped agent; reaped via its pidfd."""
        if pid not in self.pids():
            return
        self._killed.add(pid)
        groups = {pid}
        with contextlib.suppress(psutil.Error):
            for p in psutil.Process(pid).children(recursive=True):
                with contextlib.suppress(OSError):
                    groups.add(os.getpgid(p.pid))
        groups.discard(os.getpgrp())  # never the broker's own
        for group in groups:
            kill_group(group)

    def shutdown(self, grace_s: float) -> None:
        """Wait up to ``grace_s`` for agents to exit on their own, then kill and reap the rest."""
        deadline = time.monotonic() + grace_s
        for fd, w in list(self._by_fd.items()):
            if w.wait(max(0.0, deadline - time.monotonic())) is None:
                logger.warning("worker %d did not exit within %.1fs: killing it", w.pid, grace_s)
                self.kill(w.pid)
            self.reap(fd)
