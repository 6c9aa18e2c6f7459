"""Per-quantum log capture at the file-descriptor level: stdout, stderr and logging of the
task (and of anything it starts) go to one file. Must not decide where logs live.
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
    """Redirect fds 1 and 2 (and root logging at INFO) into ``path`` for the block."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    saved = [os.dup(1), os.dup(2)]
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT))
    old_level = root.level
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        root.addHandler(handler)
        if old_level == logging.NOTSET or old_level > logging.INFO:
            root.setLevel(logging.INFO)
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass  # a task closed or broke its stream; the fds are restored below
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (*saved, fd):
            os.close(f)
