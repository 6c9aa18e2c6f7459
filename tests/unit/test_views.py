"""CLI rendering: the status table and the live progress display on a terminal."""

from __future__ import annotations

import io
import json
from typing import Any

from rich.console import Console

from common.report import (
    Caveat,
    ExceptionInfo,
    ExecutionStatus,
    QuantumDetails,
    QuantumReport,
    Reason,
    Report,
    lsst_quantum_id,
)
from common.status import FailureInfo, RunningInfo, RunStatus, WorkerSummary
from scripts.cli.views import ProgressDisplay, render_report, render_status, render_triage_json

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
    assert "50.0% of 10 quanta" in tty.getvalue() and "eta 20.0s" in tty.getvalue()
    plain = io.StringIO()
    with ProgressDisplay(plain) as display:
        display.update(STATUS)
    assert plain.getvalue().count("\n") == 1
    assert "5/10 done (50.0%), 1 running, 1 failed" in plain.getvalue()


def _report_with_a_failure(skipped: int) -> Report:
    """One failed quantum ``a`` blocking ``skipped`` descendants, one success, one cancelled."""
    report = Report(taskCounts={"isr": 2, "calib": skipped, "coadd": 1})

    def add(qid: str, label: str, status: ExecutionStatus, **details: Any) -> None:
        key = lsst_quantum_id(qid)
        exc = ExceptionInfo("ValueError", "boom") if status is ExecutionStatus.FAILURE else None
        report.quantaReports.append(QuantumReport(key, label, {"id": qid}, status, None, exc))
        report.quantaDetails[key] = QuantumDetails(id=qid, **details)

    add("a", "isr", ExecutionStatus.FAILURE, reason=Reason.EXCEPTION, logPath="/logs/a.log")
    add("ok", "isr", ExecutionStatus.SUCCESS, startTime=1.0, endTime=1.5, worker="w1")
    for i in range(skipped):
        add(
            f"b{i}",
            "calib",
            ExecutionStatus.SKIPPED,
            reason=Reason.UPSTREAM_FAILURE,
            blockedBy=("a",),
        )
    add("late", "coadd", ExecutionStatus.SKIPPED, reason=Reason.CANCELLED)
    report.status = ExecutionStatus.FAILURE
    report.figures["peakIntermediates"] = 3
    return report


def test_report_names_every_quantum_that_did_not_succeed_and_what_blocked_it() -> None:
    text = render_report(_report_with_a_failure(skipped=2))
    assert "a [isr] failure (exception), exit None: ValueError: boom" in text
    assert "log: /logs/a.log" in text
    assert "b0 [calib] skipped, blocked by a" in text
    assert "b1 [calib] skipped, blocked by a" in text
    assert "late [coadd] skipped (cancelled)" in text
    assert "ok [isr]" not in text
    assert "peak intermediate datasets alive at once: 3" in text


def test_report_collapses_many_skipped_quanta_per_blocker() -> None:
    text = render_report(_report_with_a_failure(skipped=40))
    lines = text.splitlines()
    (at,) = [n for n, ln in enumerate(lines) if "blocked by a" in ln]
    assert lines[at].strip() == "40 quanta [calib] skipped, blocked by a"
    assert lines[at + 1].strip() == (
        "first: b0 {id: b0}, b1 {id: b1}, b2 {id: b2}, ... (--all lists every quantum)"
    )


def _many_failures() -> Report:
    """60 ValueErrors and 2 MemoryErrors in isr (a log each), 3 RuntimeErrors in coadd, 5
    successes of isr of which 4 found no work."""
    report = Report(taskCounts={"isr": 67, "coadd": 3})

    def add(qid: str, label: str, exc: ExceptionInfo | None, **details: Any) -> None:
        status = ExecutionStatus.FAILURE if exc else ExecutionStatus.SUCCESS
        key = lsst_quantum_id(qid)
        report.quantaReports.append(QuantumReport(key, label, {"visit": qid}, status, None, exc))
        report.quantaDetails[key] = QuantumDetails(id=qid, **details)

    for n in range(60):
        add(
            f"v{n}",
            "isr",
            ExceptionInfo("ValueError", f"bad pixel {n}"),
            reason=Reason.EXCEPTION,
            logPath=f"/logs/v{n}.log",
        )
    for n in range(2):
        add(f"m{n}", "isr", ExceptionInfo("MemoryError", ""), reason=Reason.MEMORY)
    for n in range(3):
        add(f"c{n}", "coadd", ExceptionInfo("RuntimeError", "no overlap"), reason=Reason.EXCEPTION)
    for n in range(5):
        add(f"ok{n}", "isr", None, caveat=Caveat.NO_WORK if n < 4 else None)
    report.status = ExecutionStatus.FAILURE
    return report


def test_report_groups_failures_by_task_and_exception_with_the_first_quanta_and_a_log() -> None:
    text = render_report(_many_failures())
    lines = text.splitlines()
    (at,) = [n for n, ln in enumerate(lines) if "60 quanta" in ln]
    assert lines[at].strip() == "60 quanta [isr] failure (exception): ValueError: bad pixel 0"
    assert lines[at + 1].strip().startswith("first: v0 {visit: v0}, v1 {visit: v1}, v2")
    assert lines[at + 2].strip() == "log: /logs/v0.log"
    # a group of a few lists each; the largest group comes first
    assert "m0 [isr] failure (memory), exit None: MemoryError: " in text
    assert "c2 [coadd] failure (exception), exit None: RuntimeError: no overlap" in text
    assert text.index("60 quanta") < text.index("c0 [coadd]") < text.index("m0 [isr]")
    assert "v7 " not in text  # (not listed one by one)
    # successes that found no work are counted per task
    header = next(ln for ln in lines if ln.startswith("task"))
    isr = next(ln for ln in lines if ln.startswith("isr"))
    assert header.split()[-1] == "work" and isr.split()[-1] == "4"


def test_report_json_gives_the_triage_to_scripts() -> None:
    data = json.loads(render_triage_json(_many_failures()))
    assert data["status"] == "failure"
    assert data["counts"] == {"failure": 65, "success": 5}
    assert data["tasks"]["isr"] == {"failure": 62, "success": 5, "caveats": {"no_work": 4}}
    top = data["failures"][0]
    assert (top["task"], top["exception"], top["count"], top["log"]) == (
        "isr",
        "ValueError",
        60,
        "/logs/v0.log",
    )
    assert top["quanta"][0] == {"id": "v0", "dataId": {"visit": "v0"}}
    assert [(g["task"], g["cause"], g["count"]) for g in data["failures"][1:]] == [
        ("coadd", "exception", 3),
        ("isr", "memory", 2),
    ]


def test_report_all_lists_every_quantum_with_its_status() -> None:
    text = render_report(_report_with_a_failure(skipped=40), every_quantum=True)
    listed = text.split("every quantum:")[1]
    assert "ok [isr] success 0.500s on w1" in listed
    assert "b39 [calib] skipped blocked by a" in listed
    assert "late [coadd] skipped (cancelled)" in listed
