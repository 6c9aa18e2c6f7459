"""What the CLI shows: the report summary, a run's status, and the live progress display
(rich on a terminal, plain periodic lines otherwise). Rendering only: no sockets, no runs.
"""

from __future__ import annotations

import heapq
import json
import sys
import time
from collections import Counter
from collections.abc import Mapping
from typing import TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from common.report import Caveat, ExecutionStatus, QuantumDetails, QuantumReport, Report
from common.resources import format_memory
from common.status import RunStatus
from common.triage import FIRST_KEPT, Triage
from common.triage import Group as QuantaGroup

__all__ = [
    "ProgressDisplay",
    "overall_bar",
    "render_report",
    "render_status",
    "render_triage_json",
    "status_table",
]

_DONE = ("succeeded", "failed", "timed_out", "skipped", "cancelled")


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.1f}s"
    return time.strftime("%H:%M:%S", time.gmtime(seconds))


def render_report(report: Report, *, every_quantum: bool = False) -> str:
    """Totals by status and label (with successes that found no work, were skipped as
    existing or left outputs missing), the quanta that did not succeed grouped by task label
    and how they ended (``Triage``: a group of a few lists each with its cause and log, a
    larger one its count, first quanta, first message and log), the slowest quanta;
    ``every_quantum`` lists all of them. One pass over the report's entries."""
    triage = Triage(report.status)
    every = ["every quantum:"] if every_quantum else []
    slowest: list[tuple[float, str]] = []  # a heap of the 5 longest
    for r, d in report.entries():
        triage.add(r, d)
        if every_quantum:
            every.append(_line(r, d))
        if d.startTime is not None and d.endTime is not None:
            item = (d.endTime - d.startTime, d.id)
            if len(slowest) < 5:
                heapq.heappush(slowest, item)
            elif item > slowest[0]:
                heapq.heapreplace(slowest, item)
    totals = triage.totals()
    lines = [
        f"status: {report.status.value}; "
        + ", ".join(f"{totals[s.value]} {s.value}" for s in ExecutionStatus if totals[s.value])
    ]
    lines += _label_table(triage)
    peak = report.figures.get("peakIntermediates")
    if peak is not None:
        lines.append(f"peak intermediate datasets alive at once: {peak:,.0f}")
    not_succeeded = [
        line
        for skipped in (False, True)
        for group in triage.groups(skipped=skipped)
        for line in _group_lines(group)
    ]
    if not_succeeded:
        lines += ["did not succeed:", *not_succeeded]
    lines += every
    if slowest:
        lines.append("slowest:")
        lines += [f"  {seconds:8.3f}s  {qid}" for seconds, qid in sorted(slowest, reverse=True)]
    return "\n".join(lines)


def render_triage_json(report: Report) -> str:
    """``zmpexec report --json``: the triage for scripts (``Triage.to_dict``)."""
    return json.dumps(Triage(report.status).feed(report.entries()).to_dict(), indent=2)


# successes with a note, as the label table heads them
_CAVEAT_COLUMNS = {
    Caveat.NO_WORK.value: "no work",
    Caveat.SKIPPED_EXISTING.value: "existed",
    Caveat.PARTIAL_OUTPUTS.value: "partial",
}


def _label_table(triage: Triage) -> list[str]:
    """A row per task label: quanta by status, and successes by caveat where any has one."""
    notes = [c for c in _CAVEAT_COLUMNS if any(n.get(c) for n in triage.caveats.values())]
    width = max((len(label) for label in triage.by_label), default=5)
    heads = [s.value for s in ExecutionStatus] + [_CAVEAT_COLUMNS[c] for c in notes]
    lines = [f"{'task':<{width}}  {'total':>6}  " + "  ".join(f"{h:>8}" for h in heads)]
    for label, c in sorted(triage.by_label.items()):
        noted = triage.caveats.get(label, Counter[str]())
        cells = [c.get(s.value, 0) for s in ExecutionStatus] + [noted.get(n, 0) for n in notes]
        lines.append(
            f"{label:<{width}}  {sum(c.values()):>6}  " + "  ".join(f"{n:>8}" for n in cells)
        )
    return lines


def _group_lines(group: QuantaGroup) -> list[str]:
    """A group of quanta that did not succeed: each of a few as its own line (with cause and
    log), more as one line with the count, the first quanta, the first message and log."""
    if group.count <= FIRST_KEPT:
        return [line for r, d in group.first for line in _problem(r, d)]
    if group.status == ExecutionStatus.SKIPPED.value:
        how = _skip_group_text(group)
    else:
        how = f"{group.status} ({group.cause})"
    message = "" if group.message is None else f": {_clip(group.message)}"
    first = ", ".join(d.id + (f" {_data_id(r.dataId)}" if r.dataId else "") for r, d in group.first)
    lines = [
        f"  {group.count} quanta [{group.label}] {how}{message}",
        f"    first: {first}, ... (--all lists every quantum)",
    ]
    if group.log:
        lines.append(f"    log: {group.log}")
    return lines


def _data_id(data_id: Mapping[str, int | str]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in data_id.items()) + "}"


def _clip(text: str) -> str:
    return text if len(text) <= 200 else text[:200] + "..."


def _problem(r: QuantumReport, d: QuantumDetails) -> list[str]:
    """A quantum that did not succeed, with its cause (what blocked it, for a skipped one)
    and log."""
    if r.status is ExecutionStatus.SKIPPED:
        return [f"  {d.id} [{r.taskLabel}] {_skip_text(d)}"]
    cause = (
        f"{r.exceptionInfo.className}: {r.exceptionInfo.message}"
        if r.exceptionInfo
        else (d.message or "unknown")
    )
    reason = f" ({d.reason.value})" if d.reason else ""
    lines = [
        f"  {d.id} [{r.taskLabel}] {r.status.value}{reason}, exit {r.exitCode}: {_clip(cause)}"
    ]
    if d.logPath:
        lines.append(f"    log: {d.logPath}")
    return lines


def _skip_text(d: QuantumDetails) -> str:
    if d.blockedBy:
        return "skipped, blocked by " + ", ".join(d.blockedBy)
    if d.reason is not None:
        return f"skipped ({d.reason.value})"
    return "skipped"


def _skip_group_text(group: QuantaGroup) -> str:
    if group.blocked_by:
        more = ", ..." if group.more_blockers else ""
        return "skipped, blocked by " + ", ".join(group.blocked_by) + more
    return f"skipped ({group.cause})"


def _line(r: QuantumReport, d: QuantumDetails) -> str:
    took = (
        f" {d.endTime - d.startTime:.3f}s"
        if d.startTime is not None and d.endTime is not None
        else ""
    )
    extra = f" on {d.worker}" if d.worker else ""
    if d.blockedBy:
        extra += " blocked by " + ", ".join(d.blockedBy)
    elif d.reason is not None and r.status is not ExecutionStatus.SUCCESS:
        extra += f" ({d.reason.value})"
    return f"  {d.id} [{r.taskLabel}] {r.status.value}{took}{extra}"


def status_table(status: RunStatus) -> Table:
    """Per task label: done / running / failed / total."""
    table = Table(
        title=f"{status.finished}/{status.total} quanta finished, elapsed "
        f"{_fmt_s(status.elapsed_s)}, eta {_fmt_s(status.eta_s)}"
        + (f" (stopping: {status.stopping})" if status.stopping else "")
    )
    for column in ("task", "done", "running", "failed", "skipped", "total"):
        table.add_column(column, justify="left" if column == "task" else "right")
    for label, counts in sorted(status.by_label.items()):
        table.add_row(
            label,
            str(counts.get("succeeded", 0)),
            str(counts.get("running", 0)),
            str(counts.get("failed", 0) + counts.get("timed_out", 0)),
            str(counts.get("skipped", 0) + counts.get("cancelled", 0)),
            str(sum(counts.values())),
        )
    return table


def _failures(status: RunStatus, last: int = 5) -> Text:
    text = Text()
    for f in status.failures[-last:]:
        text.append(f"{f.reason}: {f.message}\n", style="red")
        if f.log_path:
            text.append(f"    log: {f.log_path}\n", style="dim")
    return text


def render_status(status: RunStatus, console: Console) -> None:
    """The full status: labels, running quanta, failures, workers, throughput."""
    console.print(status_table(status))
    if status.running:
        running = Table(title="running")
        for column in ("quantum", "task", "worker", "elapsed"):
            running.add_column(column)
        for r in sorted(status.running, key=lambda r: -r.elapsed_s):
            running.add_row(r.id, r.label, r.worker, _fmt_s(r.elapsed_s))
        console.print(running)
    if status.failures:
        console.print(Text("failures so far:", style="bold"))
        console.print(_failures(status, last=len(status.failures)))
    for use in status.resources:
        used, budget = (
            (format_memory(use.used), format_memory(use.budget))
            if use.name == "memory"
            else (f"{use.used:g}", f"{use.budget:g}")
        )
        console.print(f"{use.name}: {used} of {budget} held by the quanta sent")
    for wait in status.waiting:
        where = f"{wait.id} ({wait.label}): " if wait.id else ""
        console.print(f"waiting: {where}{wait.why}")
    alive = ", ".join(
        f"{w.id} (pid {w.pid}{'' if w.local else ', attached'}, {w.completed} done)"
        for w in status.workers
    )
    console.print(f"workers alive: {len(status.workers)} {alive}")
    console.print(f"throughput: {status.throughput_per_s:.1f} quanta/s; eta {_fmt_s(status.eta_s)}")


def _percent(status: RunStatus) -> str:
    return f"{100.0 * status.finished / status.total:.1f}%" if status.total else "100%"


def overall_bar(status: RunStatus) -> Table:
    """One line: a bar over every quantum, the share finished, the ETA."""
    line = Table.grid(padding=(0, 1))
    line.add_row(
        ProgressBar(total=max(1, status.total), completed=status.finished, width=40),
        f"{_percent(status)} of {status.total:,} quanta",
        f"eta {_fmt_s(status.eta_s)}",
    )
    return line


class ProgressDisplay:
    """Live table on a terminal; one plain line per update elsewhere."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.interactive = stream.isatty()
        self._stream = stream
        self._console = Console(file=stream)
        self._live: Live | None = None

    @property
    def interval_s(self) -> float:
        return 0.5 if self.interactive else 5.0

    def __enter__(self) -> ProgressDisplay:
        if self.interactive:
            self._live = Live(console=self._console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None

    def update(self, status: RunStatus) -> None:
        if self._live is not None:
            self._live.update(Group(overall_bar(status), status_table(status), _failures(status)))
            return
        done = f"{status.finished}/{status.total} done ({_percent(status)})"
        parts = [done, f"{status.count('running')} running"]
        bad = status.count("failed") + status.count("timed_out")
        if bad:
            parts.append(f"{bad} failed")
        parts.append(f"eta {_fmt_s(status.eta_s)}")
        print(
            f"[{_fmt_s(status.elapsed_s):>8}] "
            + ", ".join(parts)
            + f"; {len(status.workers)} workers",
            file=self._stream,
            flush=True,
        )
