"""CLI rendering: the status table and the live progress display on a terminal."""

from __future__ import annotations

import io

from rich.console import Console

from common.status import FailureInfo, RunningInfo, RunStatus, WorkerSummary
from scripts.views import ProgressDisplay, render_status

STATUS = RunStatus(
    elapsed_s=12.5,
    total=10,
    by_label={"isr": {"succeeded": 4, "running": 1}, "coadd": {"pending": 4, "failed": 1}},
    running=[RunningInfo("isr-5", "isr", "w1", 1.25)],
    failures=[FailureInfo("coadd-0", "coadd", "exception", "ValueError: boom", "/x/coadd-0.log")],
    workers=[WorkerSummary("w1", 42, "host", True, 1, 4)],
    throughput_per_s=0.4,
    eta_s=20.0,
)


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_status_renders_labels_running_failures_and_workers() -> None:
    out = io.StringIO()
    render_status(STATUS, Console(file=out, width=120))
    text = out.getvalue()
    for fragment in (
        "5/10 quanta finished",
        "isr-5",
        "ValueError: boom",
        "/x/coadd-0.log",
        "workers alive: 1",
        "throughput: 0.4",
    ):
        assert fragment in text


def test_progress_is_a_live_table_on_a_terminal_and_lines_elsewhere() -> None:
    tty = _Tty()
    with ProgressDisplay(tty) as display:
        assert display.interactive and display.interval_s < 1
        display.update(STATUS)
    assert "coadd" in tty.getvalue() and "ValueError: boom" in tty.getvalue()
    plain = io.StringIO()
    with ProgressDisplay(plain) as display:
        display.update(STATUS)
    assert plain.getvalue().count("\n") == 1
    assert "5/10 done, 1 running, 1 failed" in plain.getvalue()
