"""Per-quantum log capture: stdout, stderr and logging of the task, and of anything it starts,
go to one file, at the file-descriptor level and at the Python level (``sys.stdout`` may be
something else, e.g. under pytest). Must not decide where logs live.

Each process captures into one reusable scratch file, reused while it stays empty; only a
quantum that wrote something gets a log file (the scratch is renamed to it, and the next
quantum gets a fresh one). Creating a file per
quantum costs up to 0.6 ms on some file systems, more than running a small quantum.

A process that does nothing but run quanta (an executor child) points its output at the
scratch for good (``StandingCapture``): a quantum then costs one ``fstat``, not eight calls
redirecting and restoring, which after a CPU-bound task (caches cold) was ~80 us a quantum.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

__all__ = ["LogCapture", "StandingCapture", "keep_scratch", "scratch_path"]

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def scratch_path(log_dir: Path, pid: int) -> Path:
    """Where process ``pid`` captures the quantum it is running."""
    return log_dir / f".capture-{pid}"


def keep_scratch(scratch: Path, final: Path) -> bool:
    """Move a non-empty scratch capture to ``final``; True if a log was kept."""
    try:
        if scratch.stat().st_size == 0:
            scratch.unlink()
            return False
        os.replace(scratch, final)
        return True
    except FileNotFoundError:
        return False


class LogCapture:
    """Captures one quantum at a time into ``log_dir``."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._fd: int | None = None
        self._text: TextIO | None = None
        self._handler: logging.Handler | None = None
        self._saved_fds: tuple[int, int] | None = None

    def _scratch(self) -> tuple[int, TextIO, logging.Handler]:
        """The open scratch file (created on first use and after each kept log), emptied."""
        if self._fd is None or self._text is None or self._handler is None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            path = scratch_path(self.log_dir, os.getpid())
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
            self._text = open(  # noqa: SIM115 - lives until the scratch is kept or closed
                os.dup(self._fd), "a", buffering=1, encoding="utf-8", errors="replace"
            )
            self._handler = logging.StreamHandler(self._text)
            self._handler.setFormatter(logging.Formatter(_FORMAT))
        # Reused only while empty: a quantum that wrote something had its scratch renamed.
        return self._fd, self._text, self._handler

    def _release(self) -> None:
        if self._text is not None:
            try:
                self._text.close()
            except (OSError, ValueError):
                pass  # the task closed or broke the stream
        if self._fd is not None:
            os.close(self._fd)
        self._fd = self._text = self._handler = None

    def close(self) -> None:
        if self._saved_fds is not None:
            for f in self._saved_fds:
                os.close(f)
            self._saved_fds = None
        if self._fd is not None:
            self._release()
            scratch_path(self.log_dir, os.getpid()).unlink(missing_ok=True)

    @contextmanager
    def capture(self, final: Path, kept: list[Path]) -> Iterator[None]:
        """Redirect fds 1 and 2, ``sys.stdout``/``sys.stderr`` and root logging (at INFO) for
        the block; afterwards, if anything was written, the log is at ``final`` (appended to
        ``kept``)."""
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass  # a broken stream must not stop the capture
        fd, text, handler = self._scratch()
        if self._saved_fds is None:  # where fds 1 and 2 go between quanta, kept for good
            self._saved_fds = (os.dup(1), os.dup(2))
        saved_fds = self._saved_fds
        saved_streams = sys.stdout, sys.stderr
        root = logging.getLogger()
        old_level = root.level
        # setLevel clears every logger's cache: only touch it when INFO would be dropped.
        raise_level = old_level == logging.NOTSET or old_level > logging.INFO
        try:
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.stdout = sys.stderr = text
            root.addHandler(handler)
            if raise_level:
                root.setLevel(logging.INFO)
            yield
        finally:
            root.removeHandler(handler)
            if raise_level:
                root.setLevel(old_level)
            sys.stdout, sys.stderr = saved_streams
            os.dup2(saved_fds[0], 1)
            os.dup2(saved_fds[1], 2)
            if self._settle(fd, text, final, kept):
                self._release()

    def _settle(self, fd: int, text: TextIO, final: Path, kept: list[Path]) -> bool:
        """After a quantum: its output, if any, becomes ``final`` (appended to ``kept``).
        True if the scratch must be let go (kept, or its stream broken by the task)."""
        broken = False
        try:
            text.flush()
        except (OSError, ValueError):
            broken = True  # the task closed or broke the stream: start afresh next time
        if os.fstat(fd).st_size > 0:
            os.replace(scratch_path(self.log_dir, os.getpid()), final)
            kept.append(final)
            return True
        return broken


class StandingCapture(LogCapture):
    """For a process that only runs quanta: fds 1 and 2, ``sys.stdout``/``sys.stderr`` and
    root logging stay on the scratch file between quanta too (a task's leftover subprocess
    writes there, as it would to its quantum's file); only a quantum that wrote something has
    its scratch renamed, and the next one gets a fresh scratch. ``own`` is where the process's
    own messages go meanwhile (its stderr as it was, for loggers given ``own_handler``)."""

    def __init__(self, log_dir: Path) -> None:
        super().__init__(log_dir)
        self._pointed: int | None = None  # the scratch fd that fds 1 and 2 point at
        self.own: TextIO = open(  # noqa: SIM115 - the process's stderr, for its life
            os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace", closefd=True
        )

    def own_handler(self) -> logging.Handler:
        handler = logging.StreamHandler(self.own)
        handler.setFormatter(logging.Formatter(_FORMAT))
        return handler

    @contextmanager
    def capture(self, final: Path, kept: list[Path]) -> Iterator[None]:
        fd, text, handler = self._scratch()
        root = logging.getLogger()
        if self._pointed != fd:
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            root.addHandler(handler)
            self._pointed = fd
        sys.stdout = sys.stderr = text  # (a task may have replaced them)
        if root.level == logging.NOTSET or root.level > logging.INFO:
            root.setLevel(logging.INFO)
        try:
            yield
        finally:
            if self._settle(fd, text, final, kept):
                self._drop(root, handler)

    def _drop(self, root: logging.Logger, handler: logging.Handler) -> None:
        """Let go of the current scratch (kept or broken); the next quantum opens another."""
        root.removeHandler(handler)
        sys.stdout = sys.stderr = self.own
        self._release()
        self._pointed = None

    def close(self) -> None:
        super().close()
        self.own.close()
