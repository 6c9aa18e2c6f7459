"""Triage of a run's report: quanta that did not succeed, grouped so that a run of 10^5
failures reads in a screen. Failures and timeouts group by task label, status, cause and
exception class; skipped quanta by task label and why (blocked by a failure, cancelled);
successes with a note (no work found, skipped as existing, partial outputs) are counted per
label. Each group keeps its count, its first few quanta (ids and data ids), the first message
and the first log. One pass over the entries, memory bounded by the number of groups. Reads
only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from common.report import Entry, ExecutionStatus, QuantumDetails, QuantumReport

__all__ = ["FIRST_KEPT", "Group", "Triage"]

FIRST_KEPT = 3  # quanta named per group


@dataclass(slots=True)
class Group:
    """Quanta of one task label that ended the same way."""

    label: str
    status: str  # failure, timeout, skipped
    cause: str  # the reason (exception, memory, upstream_failure, cancelled, ...)
    exception: str | None  # the exception class, for failures that raised
    count: int = 0
    message: str | None = None  # the first one's
    log: str | None = None  # the first log there is
    first: list[Entry] = field(default_factory=list)  # the first FIRST_KEPT quanta
    blocked_by: list[str] = field(default_factory=list)  # (skipped) their first blockers
    more_blockers: bool = False  # ... and there are others

    def add(self, r: QuantumReport, d: QuantumDetails) -> None:
        self.count += 1
        if len(self.first) < FIRST_KEPT:
            self.first.append((r, d))
        for b in d.blockedBy:
            if b in self.blocked_by:
                continue
            if len(self.blocked_by) < FIRST_KEPT:
                self.blocked_by.append(b)
            else:
                self.more_blockers = True
        if self.message is None:
            exc = r.exceptionInfo
            self.message = f"{exc.className}: {exc.message}" if exc else d.message
        if self.log is None and d.logPath:
            self.log = d.logPath

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.label,
            "status": self.status,
            "cause": self.cause,
            "exception": self.exception,
            "count": self.count,
            "message": self.message,
            "log": self.log,
            "quanta": [{"id": d.id, "dataId": dict(r.dataId)} for r, d in self.first],
            "blockedBy": self.blocked_by,
            "moreBlockers": self.more_blockers,
        }


class Triage:
    """Fed every entry of a report (``add``); then per label counts by status and by caveat,
    and the groups of quanta that did not succeed, largest first."""

    def __init__(self, status: ExecutionStatus) -> None:
        self.status = status
        self.by_label: dict[str, Counter[str]] = {}
        self.caveats: dict[str, Counter[str]] = {}
        self._groups: dict[tuple[str, str, str, str | None], Group] = {}

    def add(self, r: QuantumReport, d: QuantumDetails) -> None:
        label = r.taskLabel
        counts = self.by_label.get(label)
        if counts is None:
            counts = self.by_label[label] = Counter()
        counts[r.status.value] += 1
        if r.status is ExecutionStatus.SUCCESS:
            if d.caveat is not None:
                self.caveats.setdefault(label, Counter())[d.caveat.value] += 1
            return
        exc = r.exceptionInfo.className if r.exceptionInfo else None
        cause = d.reason.value if d.reason else "unknown"
        key = (label, r.status.value, cause, exc)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = Group(label, r.status.value, cause, exc)
        group.add(r, d)

    def feed(self, entries: Iterable[Entry]) -> Triage:
        for r, d in entries:
            self.add(r, d)
        return self

    def groups(self, *, skipped: bool) -> list[Group]:
        """The failure (and timeout) groups, or the skipped ones; largest first, then by
        label."""
        skip = ExecutionStatus.SKIPPED.value
        chosen = [g for g in self._groups.values() if (g.status == skip) == skipped]
        return sorted(chosen, key=lambda g: (-g.count, g.label, g.cause, g.exception or ""))

    def totals(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for c in self.by_label.values():
            out.update(c)
        return out

    def to_dict(self) -> dict[str, Any]:
        """For scripts (``zmpexec report --json``)."""
        return {
            "status": self.status.value,
            "counts": dict(self.totals()),
            "tasks": {
                label: {**dict(c), "caveats": dict(self.caveats.get(label, {}))}
                for label, c in sorted(self.by_label.items())
            },
            "failures": [g.to_dict() for g in self.groups(skipped=False)],
            "skipped": [g.to_dict() for g in self.groups(skipped=True)],
        }
