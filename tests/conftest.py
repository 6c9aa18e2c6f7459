"""Fixtures shared by every test: temp repositories, a wait helper, and a guard that fails
any test leaving a child process behind."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from common.butler import Butler


def wait_until(predicate: Callable[[], object], timeout_s: float, what: str) -> None:
    """Poll ``predicate`` until true; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.01)


class Background:
    """``executor.execute(graph, butler)`` in a thread, so a test can act on the running run;
    ``join`` returns what it raised (None if it succeeded)."""

    def __init__(self, executor: Any, graph: Any, butler: Butler) -> None:
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(executor, graph, butler))
        self._thread.start()

    def _run(self, executor: Any, graph: Any, butler: Butler) -> None:
        try:
            executor.execute(graph, butler)
        except BaseException as e:
            self.error = e

    def join(self, timeout_s: float = 60.0) -> BaseException | None:
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), f"execute() still running after {timeout_s}s"
        return self.error


@pytest.fixture
def butler(tmp_path: Path) -> Butler:
    return Butler(tmp_path / "repo")


@pytest.fixture(autouse=True)
def no_process_left_behind() -> Iterator[None]:
    """Every test must reap what it started; stragglers are killed and fail the test."""
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield

    def stragglers() -> list[psutil.Process]:
        out = []
        for p in me.children(recursive=True):
            try:
                if (
                    p.pid not in before
                    and p.status() != psutil.STATUS_ZOMBIE
                    and not _resource_tracker(p)
                ):
                    out.append(p)
            except psutil.NoSuchProcess:
                pass
        return out

    deadline = time.monotonic() + 5.0
    while stragglers() and time.monotonic() < deadline:
        time.sleep(0.02)
    left = stragglers()
    for p in left:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    assert not left, f"processes left behind: {[(p.pid, _command(p)) for p in left]}"


def _resource_tracker(p: psutil.Process) -> bool:
    """multiprocessing's resource tracker: one per process that ever used it, for its life
    (the first test to start a Dask cluster here starts it; it is no test's leftover)."""
    try:
        return "multiprocessing.resource_tracker" in " ".join(p.cmdline())
    except psutil.Error:
        return False


def _command(p: psutil.Process) -> list[str] | str:
    try:
        return p.cmdline()
    except psutil.Error as e:  # (it may have ended, or be a zombie, by now)
        return type(e).__name__
