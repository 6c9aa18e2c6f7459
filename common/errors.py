"""Every error zmpexec raises, rooted in one class; holds no behaviour beyond messages.

    ZmpexecError
    ├── ConfigError            bad option values, caught at construction
    ├── GraphError             a graph that must not run (cycle, duplicate id, ...)
    │   └── GraphFileError     a graph file that cannot be read or parsed
    ├── ButlerError            the embedded data repository refused an operation
    │   └── DatasetNotFoundError
    ├── ProtocolError          a frame that is not a valid message
    │   └── ProtocolVersionError
    ├── TaskResolutionError    a task path that does not import to a callable
    └── MPGraphExecutorError   a run finished with failed quanta (or could not start)
        └── MPTimeoutError     ... and timeouts were the only problem

A task's own failure never crosses a process boundary as an exception: it travels as data
(class name, message, traceback) in a result message and ends in the report.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "ButlerError",
    "ConfigError",
    "DatasetNotFoundError",
    "GraphError",
    "GraphFileError",
    "MPGraphExecutorError",
    "MPTimeoutError",
    "ProtocolError",
    "ProtocolVersionError",
    "TaskResolutionError",
    "ZmpexecError",
]


class ZmpexecError(Exception):
    """Root of every error raised by zmpexec itself."""


class ConfigError(ZmpexecError, ValueError):
    """An option has a value that can never work (negative timeout, unknown start method...)."""


class GraphError(ZmpexecError):
    """The graph must not run; ``quanta`` names the offending quantum ids."""

    def __init__(self, message: str, quanta: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.quanta = tuple(quanta)


class GraphFileError(GraphError):
    """A graph file is missing, unreadable or not in the expected shape."""


class ButlerError(ZmpexecError):
    """The embedded data repository refused an operation."""


class DatasetNotFoundError(ButlerError, KeyError):
    """A dataset was read that the repository does not hold."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "dataset not found"


class ProtocolError(ZmpexecError):
    """A frame could not be decoded into a valid message; ``data`` holds (a prefix of) it."""

    def __init__(self, message: str, data: bytes = b"") -> None:
        super().__init__(message)
        self.data = data[:64]


class ProtocolVersionError(ProtocolError):
    """A peer speaks another protocol version; ``version`` is the one it sent."""

    def __init__(self, message: str, version: object, data: bytes = b"") -> None:
        super().__init__(message, data)
        self.version = version


class TaskResolutionError(ZmpexecError):
    """A ``pkg.module:callable`` task path does not resolve to a callable."""


class MPGraphExecutorError(ZmpexecError):
    """A run ended with failed quanta, or could not start (bad fixup, no workers)."""


class MPTimeoutError(MPGraphExecutorError):
    """A run ended with timed-out quanta and no other failure."""
