"""Per-quantum log capture: stdout, stderr and logging of the task, and of anything it starts,
go to one file, at the file-descriptor level and at the Python level (``sys.stdout`` may be
something else, e.g. under pytest). Must not decide where logs live.

Each process captures into one reusable scratch file, reused while it stays empty; only a
quantum that wrote something gets a log file (the scratch is renamed to it, and the next
quantum gets a fresh one). Creating a file per
quantum costs up to 0.6 ms on some file systems, more than running a small quantum.

A process that does nothing but run quanta (an executor child) points its output at the
scratch for good (``StandingCapture``): a quantum then costs one ``lseek``, not eight calls
redirecting and restoring, which after a CPU-bound task (caches cold) was ~80 us a quantum.
A capture is ``start`` and ``stop`` rather than a context manager: the generator machinery
of one cost ~30 us a quantum with cold caches.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TextIO, TypeAlias

__all__ = ["LogCapture", "StandingCapture", "keep_scratch", "scratch_path"]

StrPath: TypeAlias = "str | os.PathLike[str]"
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
        # what ``start`` replaced: (final, sys.stdout, sys.stderr, root level to restore)
        self._started: tuple[StrPath, TextIO, TextIO, int | None] | None = None

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

    def start(self, final: StrPath) -> None:
        """Redirect fds 1 and 2, ``sys.stdout``/``sys.stderr`` and root logging (at INFO) until
        ``stop``, which puts what was written at ``final``. One quantum at a time."""
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass  # a broken stream must not stop the capture
        fd, text, handler = self._scratch()
        if self._saved_fds is None:  # where fds 1 and 2 go between quanta, kept for good
            self._saved_fds = (os.dup(1), os.dup(2))
        root = logging.getLogger()
        old_level = root.level
        # setLevel clears every logger's cache: only touch it when INFO would be dropped.
        raise_level = old_level == logging.NOTSET or old_level > logging.INFO
        self._started = (final, sys.stdout, sys.stderr, old_level if raise_level else None)
        try:
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.stdout = sys.stderr = text
            root.addHandler(handler)
            if raise_level:
                root.setLevel(logging.INFO)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> str | None:
        """Undo ``start``; the path of the quantum's log if it wrote anything."""
        assert self._started is not None and self._saved_fds is not None, "stop before start"
        assert self._fd is not None and self._text is not None and self._handler is not None
        final, sys.stdout, sys.stderr, old_level = self._started
        self._started = None
        root = logging.getLogger()
        root.removeHandler(self._handler)
        if old_level is not None:
            root.setLevel(old_level)
        os.dup2(self._saved_fds[0], 1)
        os.dup2(self._saved_fds[1], 2)
        kept, let_go = self._settle(self._fd, self._text, final)
        if let_go:
            self._release()
        return kept

    def _settle(self, fd: int, text: TextIO, final: StrPath) -> tuple[str | None, bool]:
        """After a quantum: its output, if any, becomes ``final`` (returned). True beside it if
        the scratch must be let go (kept, or its stream broken by the task)."""
        broken = False
        try:
            text.flush()
        except (OSError, ValueError):
            broken = True  # the task closed or broke the stream: start afresh next time
        # Its size, from a seek to the end: harmless, as the file is opened to append. (A cold
        # fstat costs twice as much.)
        if os.lseek(fd, 0, os.SEEK_END) > 0:
            os.replace(scratch_path(self.log_dir, os.getpid()), final)
            return os.fspath(final), True
        return None, broken


class StandingCapture(LogCapture):
    """For a process that only runs quanta: fds 1 and 2, ``sys.stdout``/``sys.stderr`` and
    root logging stay on the scratch file between quanta too (a task's leftover subprocess
    writes there, as it would to its quantum's file); only a quantum that wrote something has
    its scratch renamed, and the next one gets a fresh scratch. ``own`` is where the process's
    own messages go meanwhile (its stderr as it was, for loggers given ``own_handler``)."""

    def __init__(self, log_dir: Path) -> None:
        super().__init__(log_dir)
        self._pointed: int | None = None  # the scratch fd that fds 1 and 2 point at
        self._final: StrPath = ""  # where the running quantum's log goes
        self.own: TextIO = open(  # noqa: SIM115 - the process's stderr, for its life
            os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace", closefd=True
        )

    def own_handler(self) -> logging.Handler:
        handler = logging.StreamHandler(self.own)
        handler.setFormatter(logging.Formatter(_FORMAT))
        return handler

    def start(self, final: StrPath) -> None:
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
        self._final = final

    def stop(self) -> str | None:
        assert self._fd is not None and self._text is not None and self._handler is not None
        kept, let_go = self._settle(self._fd, self._text, self._final)
        if let_go:
            self._drop(logging.getLogger(), self._handler)
        return kept

    def _drop(self, root: logging.Logger, handler: logging.Handler) -> None:
        """Let go of the current scratch (kept or broken); the next quantum opens another."""
        root.removeHandler(handler)
        sys.stdout = sys.stderr = self.own
        self._release()
        self._pointed = None

    def close(self) -> None:
        super().close()
        self.own.close()
