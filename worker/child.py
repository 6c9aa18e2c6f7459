"""The executor child: a persistent process, forked from a preloaded forkserver, that runs the
quanta its agent hands it one at a time. Runs user code; never touches a socket.

It leads its own process group so a timeout kill takes the task's own children with it.
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import select
import signal
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path

from common.butler import Butler
from common.codec import decode, encode
from common.protocol import Assign, Ready, Result, ResultStatus
from common.report import Reason
from worker.capture import LogCapture
from worker.executor import QuantumExecutor
from worker.lifecycle import die_with_parent
from worker.runner import peak_rss_kb, run_quantum

__all__ = ["child_main"]

logger = logging.getLogger(__name__)


def _load(executor_blob: bytes) -> tuple[QuantumExecutor, Butler] | str:
    try:
        executor, butler = pickle.loads(executor_blob)
    except Exception as e:  # any unpickling problem is reported per quantum, not raised
        return f"cannot load the quantum executor in the worker: {type(e).__name__}: {e}"
    return executor, butler


def _refusal(assign: Assign, message: str) -> Result:
    return Result(
        quantum_id=assign.quantum.id,
        attempt=assign.attempt,
        status=ResultStatus.FAILURE,
        exit_code=1,
        exc_class="ExecutorLoadError",
        exc_message=message,
        reason=Reason.EXCEPTION,
        start_time=0.0,
        end_time=0.0,
        duration_s=0.0,
        max_rss_kb=peak_rss_kb(),
        log_path=None,
    )


def _preload(modules: list[str]) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as e:  # the quantum that needs it reports the error properly
            logger.warning("cannot preload task module %s: %s", name, e)


def _die_with_agent(agent_pid: int) -> None:
    """Kill this process group (the task's children too) as soon as the agent is gone.

    Our parent is the forkserver, which outlives the agent while we hold its alive pipe, so a
    parent-death signal alone would leave a running task behind when the agent is killed.
    """
    try:
        fd = os.pidfd_open(agent_pid)
    except ProcessLookupError:
        os.killpg(0, signal.SIGKILL)
        return

    def watch() -> None:
        select.select([fd], [], [])
        os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch, name="agent-watch", daemon=True).start()


def child_main(
    conn: Connection,
    executor_blob: bytes,
    log_dir: str,
    preload: list[str],
    agent_pid: int,
) -> None:
    """Load the executor and task modules, say READY, then serve ASSIGN frames from ``conn``
    until EOF (the agent recycles a child by closing or killing it)."""
    os.setpgid(0, 0)
    die_with_parent()
    _die_with_agent(agent_pid)
    # This process is ours: task logging at INFO is captured without per-quantum level changes.
    logging.getLogger().setLevel(logging.INFO)
    loaded = _load(executor_blob)
    _preload(preload)
    conn.send_bytes(encode(Ready()))
    capture = LogCapture(Path(log_dir))
    while True:
        try:
            frame = conn.recv_bytes()
        except (EOFError, OSError):
            return  # the agent is gone or closed the pipe: nothing left to do
        assign = decode(frame)
        if not isinstance(assign, Assign):
            logger.error("executor child got %s, expected ASSIGN", type(assign).__name__)
            continue
        if isinstance(loaded, str):
            result = _refusal(assign, loaded)
        else:
            executor, butler = loaded
            result = run_quantum(executor, butler, assign.quantum, assign.attempt, capture)
        conn.send_bytes(encode(result))
    capture.close()


def main(argv: list[str] | None = None) -> None:
    """``python -m worker.child FD``: a child started as a subprocess (on Dask workers, where
    ``multiprocessing`` cannot start children). FD is its end of a socket pair; the first frame
    is the pickled ``(executor blob, log dir, preload, parent pid)``."""
    args = sys.argv[1:] if argv is None else argv
    conn = Connection(int(args[0]))
    blob, log_dir, preload, parent_pid = pickle.loads(conn.recv_bytes())
    child_main(conn, blob, log_dir, preload, parent_pid)


if __name__ == "__main__":
    main()
