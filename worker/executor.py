"""Quantum executors: run one quantum against a butler. Exceptions mean failure; the runner
turns outcomes into results. Must not know about sockets, processes or reports.
"""

from __future__ import annotations

import logging
import time
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from common.butler import Butler
from common.quantum import Quantum, resolve_task
from common.report import Caveat

__all__ = [
    "NOTHING_DECLARED",
    "Allotment",
    "OutputMismatchError",
    "QuantumExecutor",
    "QuantumFailure",
    "TaskQuantumExecutor",
    "allot",
    "allotment",
    "allotted",
    "unallot",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Allotment:
    """What the running attempt was given: the memory it requests in MiB (declared, from
    the run's defaults or raised by a memory retry; None: none), the cores it declares
    (None: none, it counts one), and its number (1: the first; a later one may find what an
    earlier one left). Executors read it with ``allotted()`` (LSST's executor makes it the
    task's ``ExecutionResources``, and clears a failed attempt's outputs before a retry)."""

    memory_mb: float | None = None
    cpus: int | None = None
    attempt: int = 1


NOTHING_DECLARED = Allotment()


def allotment(memory_mb: float | None, cpus: int | None, attempt: int) -> Allotment:
    """The allotment of an attempt sent with these terms (``NOTHING_DECLARED``, shared, for
    a first attempt that declares nothing)."""
    if memory_mb is None and cpus is None and attempt == 1:
        return NOTHING_DECLARED
    return Allotment(memory_mb, cpus, attempt)


_ALLOTTED: ContextVar[Allotment] = ContextVar("zmpexec_allotment", default=NOTHING_DECLARED)


def allotted() -> Allotment:
    """The allotment of the attempt running in this thread (``NOTHING_DECLARED`` outside
    one)."""
    return _ALLOTTED.get()


def allot(allotment: Allotment) -> Token[Allotment]:
    """The runner: ``allotment`` is the running attempt's until ``unallot`` of the token."""
    return _ALLOTTED.set(allotment)


def unallot(token: Token[Allotment]) -> None:
    _ALLOTTED.reset(token)


class QuantumFailure(Exception):
    """Raised by an executor to fail a quantum with a chosen exit code, and to stop the whole
    run when ``stop_run``; ``class_name`` is what the report names (the original error)."""

    def __init__(
        self, message: str, *, class_name: str, exit_code: int = 1, stop_run: bool = False
    ) -> None:
        super().__init__(message)
        self.class_name = class_name
        self.exit_code = exit_code
        self.stop_run = stop_run


class OutputMismatchError(Exception):
    """A task returned something that does not match its quantum's declared outputs."""


@runtime_checkable
class QuantumExecutor(Protocol):
    """Runs one quantum; raises on failure, may return a ``Caveat`` on success (the report
    counts them). Must be picklable: it travels to every worker."""

    def execute(self, quantum: Quantum, butler: Butler) -> Caveat | None: ...


class TaskQuantumExecutor:
    """Imports ``quantum.task``, loads inputs, calls it, stores outputs.

    The task is called with each input as a keyword argument (named by the quantum's input
    mapping) plus ``config``. One output stores the return value; several expect a dict keyed
    by output name.
    """

    def execute(self, quantum: Quantum, butler: Butler) -> None:
        task = resolve_task(quantum.task)
        t0 = time.monotonic()
        kwargs = {arg: butler.get(dataset) for arg, dataset in quantum.inputs.items()}
        kwargs.update(quantum.config)
        t1 = time.monotonic()
        value = task(**kwargs)
        t2 = time.monotonic()
        outputs = quantum.outputs
        if len(outputs) == 1:
            ((dataset,),) = [tuple(outputs.values())]
            butler.put(dataset, value, replace=True)
        elif outputs:
            if not isinstance(value, dict) or set(value) != set(outputs):
                got = sorted(value) if isinstance(value, dict) else type(value).__name__
                raise OutputMismatchError(
                    f"task {quantum.task} must return a dict with keys {sorted(outputs)}, got {got}"
                )
            for key, dataset in outputs.items():
                butler.put(dataset, value[key], replace=True)
        logger.debug(
            "quantum %s (%s): read %.3fs, run %.3fs, write %.3fs",
            quantum.id,
            quantum.task_label,
            t1 - t0,
            t2 - t1,
            time.monotonic() - t2,
        )

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)

    def __hash__(self) -> int:
        return hash(type(self))
