"""The agent's executor child: started from a forkserver that preloaded the task modules,
watched (its exit sentinel, the record it shares with the agent), killed with its whole
process group, replaced. Runs in the agent; never runs user code.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from multiprocessing.process import BaseProcess
from pathlib import Path

import zmq

from common.protocol import Welcome
from worker.child import ChildConfig, direct_main
from worker.lifecycle import kill_group, oom_kills
from worker.record import SharedRecord

__all__ = ["ExecutorSupervisor"]

logger = logging.getLogger(__name__)

_PRELOAD = ["worker.child", "worker.executor", "common.butler", "common.codec", "zmq"]


class ExecutorSupervisor:
    """One executor child at a time, its exit sentinel and its record's wake-ups (an attempt
    with a memory request started) registered in ``poller``.

    ``generation`` counts the children: the broker tells their reports apart by it.
    """

    def __init__(
        self, welcome: Welcome, poller: zmq.Poller, endpoint: str, keys_dir: Path | None
    ) -> None:
        self._welcome = welcome
        self._poller = poller
        self._endpoint, self._keys_dir = endpoint, keys_dir
        self._mp = multiprocessing.get_context("forkserver")
        # The forkserver imports the task modules once, so a replacement child (after a
        # timeout, a crash or recycling) starts with them loaded, in milliseconds.
        self._mp.set_forkserver_preload(_PRELOAD + welcome.preload)
        self._child: BaseProcess | None = None
        self.record: SharedRecord | None = None
        self._oom_baseline: int | None = None
        self._started_at = 0.0
        self.generation = 0

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    @property
    def alive(self) -> bool:
        return self._child is not None

    def exited(self, events: dict[object, int]) -> bool:
        return self._child is not None and self._child.sentinel in events

    def woken(self, events: dict[object, int]) -> bool:
        """The child woke us to watch an attempt's memory (the wake-up is taken)."""
        if self._child is None or self.record is None or self.record.wake_fd not in events:
            return False
        self.record.woken()
        return True

    def start(self) -> None:
        w = self._welcome
        self.generation += 1
        config = ChildConfig(
            link=w.executor_link,
            endpoint=self._endpoint,
            keys_dir=self._keys_dir,
            worker_id=w.worker_id,
            agent_pid=os.getpid(),
            generation=self.generation,
            executor_blob=w.executor,
            log_dir=w.log_dir,
            preload=w.preload,
            max_quanta=w.max_quanta_per_executor,
            max_rss_kb=w.max_rss_kb,
        )
        self.record = SharedRecord(self._mp)
        child = self._mp.Process(
            target=direct_main, args=(config, self.record), name="zmpexec-executor", daemon=False
        )
        child.start()
        self._child = child
        self._started_at = time.monotonic()
        self._oom_baseline = oom_kills(os.getpid())  # the child shares our memory cgroup
        self._poller.register(child.sentinel, zmq.POLLIN)
        self._poller.register(self.record.wake_fd, zmq.POLLIN)

    def stop(self) -> None:
        """Kill the child's process group (the task's own children too, even when the child
        itself has already died) and reap it."""
        child = self._child
        self._child = None
        if child is None:
            return
        self._poller.unregister(child.sentinel)
        if child.pid is not None:
            kill_group(child.pid)
        child.join(5.0)
        child.close()
        if self.record is not None:
            self._poller.unregister(self.record.wake_fd)
            self.record.close()  # its fields stay readable

    def age_s(self) -> float:
        """Seconds since the current child was started."""
        return time.monotonic() - self._started_at

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
