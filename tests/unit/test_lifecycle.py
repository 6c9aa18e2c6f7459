"""Process-lifetime helpers: exit descriptions and the OOM-kill counter lookup."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from worker.lifecycle import describe_exit, oom_kills


@pytest.mark.parametrize(
    ("code", "text"),
    [(-11, "killed by signal 11 (SIGSEGV)"), (-9, "(SIGKILL)"), (3, "exited with code 3")],
)
def test_exits_are_described_with_the_signal_named(code: int, text: str) -> None:
    assert text in describe_exit(code)


def test_oom_counter_is_read_from_the_process_memory_cgroup(tmp_path: Path) -> None:
    # Given a fake cgroup tree shaped like this process's own (v1 or v2)
    lines = Path(f"/proc/{os.getpid()}/cgroup").read_text().splitlines()
    for line in lines:
        _, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        if controllers == "":
            d = tmp_path / rel
            d.mkdir(parents=True, exist_ok=True)
            (d / "memory.events").write_text("low 0\nhigh 0\nmax 2\noom 2\noom_kill 7\n")
        elif "memory" in controllers.split(","):
            d = tmp_path / "memory" / rel
            d.mkdir(parents=True, exist_ok=True)
            (d / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 7\n")
    # Then the counter is found
    assert oom_kills(os.getpid(), root=tmp_path) == 7


def test_oom_counter_is_none_without_cgroup_files(tmp_path: Path) -> None:
    assert oom_kills(os.getpid(), root=tmp_path) is None
