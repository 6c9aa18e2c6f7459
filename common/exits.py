"""Every process exit code zmpexec gives, in one place: the CLI's, the worker agent's and the
attached-workers launcher's. Plain values; no behaviour beyond naming them.
"""

from __future__ import annotations

import enum
import signal

__all__ = ["ExitCode"]


class ExitCode(enum.IntEnum):
    OK = 0
    QUANTA_FAILED = 1  # some quanta failed or timed out (or some attached worker failed)
    BAD_INPUT = 2  # bad usage or invalid input: nothing ran
    REFUSED = 3  # worker: the broker refused it (protocol version, or written off)
    BROKER_LOST = 4  # worker: its broker went silent past the liveness limit
    NO_BROKER = 5  # worker: no broker answered within the startup timeout
    PARENT_GONE = 6  # worker: the process that started it died
    INTERRUPTED = 130  # SIGINT
    TERMINATED = 143  # SIGTERM

    @classmethod
    def for_signal(cls, signum: int) -> ExitCode:
        """The code of a run stopped by ``signum`` (SIGTERM: 143, anything else: 130)."""
        return cls.TERMINATED if signum == signal.SIGTERM else cls.INTERRUPTED

    @classmethod
    def describe(cls, code: int) -> str:
        """What an exit code says, for a launcher reporting its agents."""
        try:
            known = cls(code)
        except ValueError:
            return f"exited with code {code}"
        return _WHAT.get(known, known.name.lower().replace("_", " "))


_WHAT = {
    ExitCode.REFUSED: "refused by the broker (see its log)",
    ExitCode.BROKER_LOST: "lost its broker",
    ExitCode.NO_BROKER: "found no broker",
    ExitCode.PARENT_GONE: "lost the process that started it",
}
