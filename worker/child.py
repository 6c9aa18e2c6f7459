"""The executor child: a persistent process, forked from a preloaded forkserver, that runs
quanta one at a time. Runs user code.

A worker agent's child (``direct_main``) takes its ASSIGNs from a channel of its own (a
link to a broker on the same host, else a DEALER socket) and sends RESULTs on it, so no other
process is woken per quantum; it records what it runs in memory shared with its agent
(``SharedRecord``), which supervises beside it, and arms its own deadline (SIGALRM, whose
default action ends the process even while a task holds the GIL). On Dask workers
(``child_main``) it is handed ASSIGN frames over a pipe instead.

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
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from common.butler import Butler
from common.codec import decode, encode
from common.errors import ProtocolError
from common.protocol import Assign, Ready, Refuse, Result, ResultStatus, Revoked
from common.report import Reason
from worker.capture import StandingCapture
from worker.channel import Channel, open_channel
from worker.executor import QuantumExecutor, allotment
from worker.lifecycle import die_with_parent
from worker.meter import AttemptMeter
from worker.procfs import own_rss_kb, tree_rss_kb
from worker.record import SharedRecord
from worker.runner import log_file, run_quantum

__all__ = ["ChildConfig", "child_main", "direct_main"]


@dataclass(frozen=True, slots=True)
class ChildConfig:
    """What a worker agent's child needs: where its broker is (``link``, else ``endpoint``),
    who it works for, when to leave (after ``max_quanta`` or past ``max_rss_kb``) for a fresh
    replacement."""

    link: str | None
    endpoint: str
    keys_dir: Path | None
    worker_id: str
    agent_pid: int
    generation: int
    executor_blob: bytes
    log_dir: str
    preload: list[str]
    max_quanta: int | None
    max_rss_kb: int | None


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
        max_rss_kb=None,
        log_path=None,
    )


def _preload(modules: list[str]) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as e:  # the quantum that needs it reports the error properly
            logger.warning("cannot preload task module %s: %s", name, e)


def _start(agent_pid: int) -> None:
    """Lead a process group of our own and die with the agent."""
    os.setpgid(0, 0)
    die_with_parent()
    _die_with_agent(agent_pid)
    # This process is ours: task logging at INFO is captured without per-quantum level changes.
    logging.getLogger().setLevel(logging.INFO)


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


def _standing_capture(log_dir: Path) -> StandingCapture:
    """This process's output goes to the quantum scratch for good; its own messages go to its
    stderr as it was (never into a quantum's log)."""
    capture = StandingCapture(log_dir)
    logger.addHandler(capture.own_handler())
    logger.propagate = False
    return capture


def child_main(
    conn: Connection,
    executor_blob: bytes,
    log_dir: str,
    preload: list[str],
    agent_pid: int,
) -> None:
    """Load the executor and task modules, say READY, then serve ASSIGN frames from ``conn``
    until EOF (the agent recycles a child by closing or killing it)."""
    _start(agent_pid)
    loaded = _load(executor_blob)
    _preload(preload)
    ready_kb = own_rss_kb()  # (what its quanta use is measured beyond this)
    conn.send_bytes(encode(Ready(worker_id="", pid=agent_pid, generation=1)))
    capture = _standing_capture(Path(log_dir))
    meter = AttemptMeter()
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
            quantum, attempt = assign.quantum, assign.attempt
            result = run_quantum(
                executor,
                butler,
                quantum,
                attempt,
                capture,
                meter=meter,
                base_kb=ready_kb,
                allotment=allotment(assign.memory_mb, assign.cpus, assign.attempt),
            )
        conn.send_bytes(encode(result))
    capture.close()
    meter.close()


def direct_main(config: ChildConfig, record: SharedRecord) -> None:
    """Load the executor and task modules, say READY on a channel of our own, then run the
    ASSIGNs that arrive on it until killed, or leave on our own once recycling is due."""
    _start(config.agent_pid)
    loaded = _load(config.executor_blob)
    _preload(config.preload)
    channel = open_channel(config.link, config.endpoint, config.keys_dir)
    ready_kb = own_rss_kb()
    record.ready(ready_kb)  # (what its quanta use is measured beyond this)
    channel.send(encode(Ready(config.worker_id, config.agent_pid, config.generation)))
    capture = _standing_capture(Path(config.log_dir))
    signal.signal(signal.SIGALRM, signal.SIG_DFL)  # our deadline: the alarm ends us
    meter = AttemptMeter(watched=record.peak_kb)  # the agent's samples count in the peak
    done = 0
    succeeded = 0  # the seq of the last dispatch that succeeded here, if it was the last run
    while not _recycle_due(config, done) and (assign := _next_assign(channel)) is not None:
        qid, attempt = assign.quantum.id, assign.attempt
        if assign.after and assign.after != succeeded:
            continue  # a follow-on of a dispatch that did not succeed here: never runs
        succeeded = 0
        log = log_file(config.log_dir, qid, attempt)
        # (with a request, the agent compares the tree beyond what the child holds now)
        base = 0 if assign.memory_mb is None else own_rss_kb()
        refused = record.take(assign.seq, assign.timeout_s, log, assign.memory_mb, base)
        if refused == "draining":
            channel.send(encode(Revoked(qid, attempt)))
        if refused is not None:
            continue
        if assign.timeout_s is not None:
            signal.setitimer(signal.ITIMER_REAL, assign.timeout_s)
        if isinstance(loaded, str):
            result = _refusal(assign, loaded)
        else:
            executor, butler = loaded
            quantum = assign.quantum
            result = run_quantum(
                executor,
                butler,
                quantum,
                attempt,
                capture,
                log=log,
                meter=meter,
                base_kb=ready_kb,
                allotment=allotment(assign.memory_mb, assign.cpus, assign.attempt),
            )
        if assign.timeout_s is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
        # Marked finished before it is sent: dying in between loses a result (the attempt is
        # retried), never reports a finished quantum as crashed.
        record.finished()
        channel.send(encode(result))
        if result.status is ResultStatus.SUCCESS:
            succeeded = assign.seq
        done += 1
    capture.close()
    meter.close()
    channel.close()


def _next_assign(channel: Channel) -> Assign | None:
    """The next ASSIGN on ``channel``; None when it is time to leave (the broker is gone or
    refused us). Other frames are logged and skipped."""
    while True:
        try:
            msg = decode(channel.recv())
        except EOFError:
            return None  # the broker is gone: our agent ends us soon
        except ProtocolError as e:
            logger.error("executor child dropped a bad frame: %s", e)
            continue
        if isinstance(msg, Assign):
            return msg
        if isinstance(msg, Refuse):
            logger.error("broker refused this executor: %s", msg.reason)
            return None
        logger.error("executor child got %s, expected ASSIGN", type(msg).__name__)


def _recycle_due(config: ChildConfig, done: int) -> bool:
    if config.max_quanta is not None and done >= config.max_quanta:
        return True
    if config.max_rss_kb is not None and done:
        rss = tree_rss_kb(os.getpid())
        if rss is not None and rss > config.max_rss_kb:
            logger.info("executor child uses %d KiB > %d KiB: leaving", rss, config.max_rss_kb)
            return True
    return False


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
