"""The in-process driver of the broker core (``numProc == 1``): one virtual worker that runs
each quantum right here, in this process, where a debugger can take a failing task over.
No sockets, no processes; timeouts are not enforced (as LSST's executor at ``-j 1``).
"""

from __future__ import annotations

import importlib
import os
import socket
import time
from collections.abc import Callable, Collection
from pathlib import Path

from broker.core import BrokerCore
from broker.core.events import (
    Dispatch,
    Event,
    ResultReceived,
    StopRequested,
    WorkerHeard,
    WorkerJoined,
    WorkerReady,
)
from broker.core.journaling import JournalSink
from common.butler import Butler
from common.config import ExecutionConfig
from common.errors import MPGraphExecutorError
from common.graph import QuantumGraph
from worker.capture import LogCapture
from worker.executor import QuantumExecutor, allotment
from worker.runner import run_quantum

__all__ = ["run_in_process"]

_ME = b"in-process"


def run_in_process(
    graph: QuantumGraph,
    config: ExecutionConfig,
    executor: QuantumExecutor,
    butler: Butler,
    *,
    journal: JournalSink,
    done: Collection[int],
    log_dir: Path,
    pdb: str | None,
    stop_requested: Callable[[], str | None],
) -> BrokerCore:
    """Run ``graph`` here; returns the finished core. ``pdb`` names a debugger module whose
    ``post_mortem`` takes a task's exception (logs are not captured then: it needs the
    terminal); ``stop_requested`` says whether (and why) to stop, asked between quanta."""
    core = BrokerCore(graph, config, journal=journal, done=done, in_process=True)
    debugger = importlib.import_module(pdb) if pdb else None
    capture = None if debugger else LogCapture(log_dir)
    joined = WorkerJoined(_ME, os.getpid(), socket.gethostname(), 1, False, name="in-process")
    try:
        actions = core.start(time.monotonic())
        actions += core.step([joined, WorkerReady(_ME)], time.monotonic())
        while not core.over:
            events: list[Event] = []
            stop = stop_requested()
            if stop is not None:
                events.append(StopRequested(stop, graceful=True))
            for action in actions:
                if isinstance(action, Dispatch):
                    result = run_quantum(
                        executor,
                        butler,
                        graph.quantum_at(action.index),
                        action.attempt,
                        capture,
                        in_process=True,
                        on_exception=debugger.post_mortem if debugger else None,
                        allotment=allotment(action.memory_mb, action.cpus, action.attempt),
                    )
                    events.append(ResultReceived(_ME, result))
            if not events:
                raise MPGraphExecutorError("in-process run stalled with nothing to run")
            events.append(WorkerHeard(_ME))  # this process is the worker's agent
            actions = core.step(events, time.monotonic())
    finally:
        if not core.over:  # interrupted (KeyboardInterrupt): cancel the rest, journaled
            core.step([StopRequested("interrupted")], time.monotonic())
        if capture is not None:
            capture.close()
    return core
