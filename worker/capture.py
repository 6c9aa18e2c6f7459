"""Per-quantum log capture: stdout, stderr and logging of the task, and of anything it starts,
go to one file, at the file-descriptor level and at the Python level (``sys.stdout`` may be
something else, e.g. under pytest). Must not decide where logs live.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["capture_output"]

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextmanager
def capture_output(path: Path) -> Iterator[None]:
    """Redirect fds 1 and 2, ``sys.stdout``/``sys.stderr`` and root logging (at INFO) into
    ``path`` for the block."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # a broken stream must not stop the capture
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    saved_fds = [os.dup(1), os.dup(2)]
    saved_streams = sys.stdout, sys.stderr
    text = open(os.dup(fd), "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
    root = logging.getLogger()
    handler = logging.StreamHandler(text)
    handler.setFormatter(logging.Formatter(_FORMAT))
    old_level = root.level
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdout = sys.stderr = text
        root.addHandler(handler)
        if old_level == logging.NOTSET or old_level > logging.INFO:
            root.setLevel(logging.INFO)
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        sys.stdout, sys.stderr = saved_streams
        try:
            text.close()
        except (OSError, ValueError):
            pass  # the task closed or broke the stream; the fds are restored below
        os.dup2(saved_fds[0], 1)
        os.dup2(saved_fds[1], 2)
        for f in (*saved_fds, fd):
            os.close(f)
