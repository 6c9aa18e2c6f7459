"""Runs one quantum through an executor with log capture and turns the outcome into a Result.

Shared by the executor child and the in-process mode. Must not touch sockets.
"""

from __future__ import annotations

import re
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from common.butler import Butler
from common.codec import Peek
from common.protocol import Result, ResultStatus
from common.quantum import Quantum
from common.report import Caveat, Reason
from worker.capture import LogCapture, keep_scratch, scratch_path
from worker.executor import (
    NOTHING_DECLARED,
    Allotment,
    QuantumExecutor,
    QuantumFailure,
    allot,
    unallot,
)
from worker.meter import AttemptMeter

__all__ = [
    "MAX_MESSAGE_CHARS",
    "ended_without_result",
    "log_file",
    "log_path_for",
    "run_quantum",
]

MAX_MESSAGE_CHARS = 1_000_000  # a task's exception message is kept up to this size
_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]")
EXCEPTION_EXIT_CODE = 1  # what an executor process reports for a task exception, as LSST's


def log_file(log_dir: str, quantum_id: str, attempt: int) -> str:
    """Where the log of ``quantum_id``'s ``attempt`` goes, as a string (built per quantum:
    a ``Path`` costs ~80 us with cold caches, this ~20)."""
    name = _UNSAFE.sub("_", quantum_id)[:180]
    return f"{log_dir}/{name}.log" if attempt <= 1 else f"{log_dir}/{name}.attempt{attempt}.log"


def log_path_for(log_dir: Path, quantum_id: str, attempt: int) -> Path:
    return Path(log_file(str(log_dir), quantum_id, attempt))


def _message(e: BaseException) -> str:
    try:
        return str(e)[:MAX_MESSAGE_CHARS]
    except Exception:  # a broken __str__ must not hide the failure itself
        return f"<unprintable {type(e).__name__}>"


def _class_name(e: BaseException) -> str:
    cls = type(e)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def run_quantum(
    executor: QuantumExecutor,
    butler: Butler,
    quantum: Quantum,
    attempt: int,
    capture: LogCapture | None,
    *,
    in_process: bool = False,
    on_exception: Callable[[TracebackType | None], object] | None = None,
    log: str | None = None,
    meter: AttemptMeter | None = None,
    base_kb: int | None = None,
    allotment: Allotment = NOTHING_DECLARED,
) -> Result:
    """Execute and describe the outcome; only KeyboardInterrupt escapes. ``log`` is where a
    captured quantum's log goes (``log_file`` unless the caller worked it out already);
    ``meter`` measures the attempt (a process that runs many keeps one); ``base_kb``: what
    that process held before it, not the attempt's own (``Result.base_rss_kb``);
    ``allotment``: what the attempt was given (``allotted()`` while it runs)."""
    own_meter = meter is None
    if meter is None:
        meter = AttemptMeter()
    kept: str | None = None
    start, t0 = time.time(), time.monotonic()
    outcome = _SUCCEEDED if not in_process else _SUCCEEDED_HERE
    caveat: object = None
    meter.start()
    given = allot(allotment)
    try:
        if capture is None:
            caveat = executor.execute(quantum, butler)
        else:
            capture.start(log or log_file(str(capture.log_dir), quantum.id, attempt))
            try:
                caveat = executor.execute(quantum, butler)
            except BaseException:
                traceback.print_exc()  # the traceback belongs in the quantum's log
                raise
            finally:
                kept = capture.stop()
    except KeyboardInterrupt:
        if own_meter:
            meter.close()
        raise
    except BaseException as e:
        outcome = _failure(e, in_process)
        if on_exception is not None and not isinstance(e, SystemExit):
            on_exception(e.__traceback__)
    finally:
        unallot(given)
    peak_kb, cpu_s = meter.stop()
    if own_meter:
        meter.close()
    status, exit_code, reason, exc_class, exc_message, stop_run = outcome
    return Result(
        quantum_id=quantum.id,
        attempt=attempt,
        status=status,
        exit_code=exit_code,
        exc_class=exc_class,
        exc_message=exc_message,
        reason=reason,
        start_time=start,
        end_time=time.time(),
        duration_s=time.monotonic() - t0,
        max_rss_kb=peak_kb,
        log_path=kept,
        stop_run=stop_run,
        cpu_s=cpu_s,
        base_rss_kb=base_kb,
        caveat=caveat if isinstance(caveat, Caveat) and status is ResultStatus.SUCCESS else None,
    )


# (status, exit code, reason, exception class, message, stop the run) of an attempt
_Outcome = tuple[ResultStatus, int | None, Reason | None, str | None, str | None, bool]
_SUCCEEDED: _Outcome = (ResultStatus.SUCCESS, 0, None, None, None, False)
_SUCCEEDED_HERE: _Outcome = (ResultStatus.SUCCESS, None, None, None, None, False)  # in-process


def _failure(e: BaseException, in_process: bool) -> _Outcome:
    """How an attempt that raised ``e`` ended: ``sys.exit(0)`` is a success, another exit
    code an ``exit_code`` failure, a ``MemoryError`` a ``memory`` failure, any other exception
    an ``exception`` failure (a ``QuantumFailure`` with its own class name, exit code and
    stop-the-run flag)."""
    if isinstance(e, SystemExit):
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if code == 0:
            return _SUCCEEDED_HERE if in_process else _SUCCEEDED
        message = f"task called sys.exit({e.code!r})"
        return ResultStatus.FAILURE, code, Reason.EXIT_CODE, "SystemExit", message, False
    if isinstance(e, QuantumFailure):
        status = ResultStatus.FAILURE
        return status, e.exit_code, Reason.EXCEPTION, e.class_name, _message(e), e.stop_run
    exit_code = None if in_process else EXCEPTION_EXIT_CODE
    reason = Reason.MEMORY if isinstance(e, MemoryError) else Reason.EXCEPTION
    return ResultStatus.FAILURE, exit_code, reason, _class_name(e), _message(e), False


def ended_without_result(
    job: Peek,
    status: ResultStatus,
    code: int | None,
    reason: Reason,
    message: str,
    started: float | None,
    log_dir: Path,
    child_pid: int | None = None,
) -> Result:
    """The result of an attempt that ended without one of its own (a timeout, a crash): what
    the task wrote before it died (``child_pid``'s scratch capture) is kept as its log."""
    now = time.time()
    started = now if started is None else started
    log = log_path_for(log_dir, job.quantum_id, job.attempt)
    if child_pid is not None:
        keep_scratch(scratch_path(log_dir, child_pid), log)
    return Result(
        quantum_id=job.quantum_id,
        attempt=job.attempt,
        status=status,
        exit_code=code,
        exc_class=None,
        exc_message=message,
        reason=reason,
        start_time=started,
        end_time=now,
        duration_s=max(0.0, now - started),
        max_rss_kb=None,
        log_path=str(log) if log.exists() else None,
    )
