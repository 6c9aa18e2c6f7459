"""Repeated runs in one process hold no files open (LSST's test_mpexec_num_fd)."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker import MPGraphExecutor
from common.butler import Butler
from tests.graphs import chain
from worker.executor import TaskQuantumExecutor


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def no_automatic_gc() -> Iterator[None]:
    """Reference cycles stay uncollected, so a cycle holding a file shows as a leak."""
    gc.disable()
    yield
    gc.enable()


@pytest.mark.parametrize("num_proc", [1, 2])
@pytest.mark.usefixtures("no_automatic_gc")
def test_runs_with_a_fresh_butler_each_leave_no_file_open(tmp_path: Path, num_proc: int) -> None:
    def run(i: int, *, scoped: bool) -> None:
        ex = MPGraphExecutor(num_proc, None, TaskQuantumExecutor(), run_dir=tmp_path / f"run{i}")
        if scoped:
            with Butler(tmp_path / f"repo{i}") as butler:
                ex.execute(chain(3), butler)
        else:  # dropped without close(): released as soon as the last reference goes
            ex.execute(chain(3), Butler(tmp_path / f"repo{i}"))

    run(0, scoped=True)  # warm-up: imports, caches
    before = _open_fds()
    for i in range(1, 4):
        run(i, scoped=i % 2 == 0)
    assert _open_fds() - before < 3


def test_butler_is_a_context_manager_that_closes_its_registry(tmp_path: Path) -> None:
    with Butler(tmp_path / "repo") as butler:
        butler.put("d", 1)
        opened = _open_fds()
    assert _open_fds() < opened
    assert butler.get("d") == 1  # usable again: the registry reopens
    butler.close()
