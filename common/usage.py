"""What each task label used in a run, from its report: counts, wall and CPU time, each
quantum's own peak memory (p50, p95, max), the memory it declared and how much of that it used;
and the BPS ``pipetask:`` block a cluster submission could start from. Reads the report's
entries once, streaming; must not touch sockets or processes.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import yaml

from common.report import Entry

__all__ = ["BPS_MARGIN", "LabelUsage", "bps_block", "label_usage", "usage_table"]

BPS_MARGIN = 1.2  # requestMemory = this x the largest peak measured, rounded up ...
_BPS_STEP_MB = 64  # ... to a multiple of this many MB


@dataclass
class LabelUsage:
    """One task label's quanta that ran (succeeded or failed with figures)."""

    label: str
    count: int = 0
    wall: array[float] = field(default_factory=lambda: array("d"))
    cpu: array[float] = field(default_factory=lambda: array("d"))
    peak_mb: array[float] = field(default_factory=lambda: array("d"))
    request_mb: float | None = None  # the largest declared

    def wall_mean(self) -> float | None:
        return sum(self.wall) / len(self.wall) if self.wall else None

    def cpu_mean(self) -> float | None:
        return sum(self.cpu) / len(self.cpu) if self.cpu else None

    def peak(self, q: float) -> float | None:
        """The ``q`` quantile (0..100) of the quanta's own peaks, MiB."""
        return float(np.percentile(np.frombuffer(self.peak_mb), q)) if self.peak_mb else None

    def used(self) -> float | None:
        """The largest peak as a share of the request (None without both)."""
        top = self.peak(100)
        return None if top is None or not self.request_mb else top / self.request_mb

    def cores(self) -> int:
        """Cores a quantum keeps busy: its CPU over its wall time, median, at least 1."""
        ratios = [c / w for c, w in zip(self.cpu, self.wall, strict=False) if w > 0]
        return max(1, round(float(np.median(ratios)))) if ratios else 1


def label_usage(entries: Iterable[Entry]) -> dict[str, LabelUsage]:
    """Per task label, from a report's entries (quanta that never ran count in ``count``
    only)."""
    out: dict[str, LabelUsage] = {}
    for r, d in entries:
        u = out.get(r.taskLabel)
        if u is None:
            u = out[r.taskLabel] = LabelUsage(r.taskLabel)
        u.count += 1
        if d.wallTime is not None:
            u.wall.append(d.wallTime)
            if d.cpuTime is not None:
                u.cpu.append(d.cpuTime)
        if d.maxRss is not None:
            u.peak_mb.append(d.maxRss / 1024)
        if d.memoryRequest is not None:
            u.request_mb = max(u.request_mb or 0.0, d.memoryRequest)
    return dict(sorted(out.items()))


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def usage_table(usage: dict[str, LabelUsage]) -> str:
    """A plain-text table, one line per label."""
    head = (
        "label", "quanta", "wall mean s", "wall max s", "cpu mean s", "peak p50 MiB",
        "peak p95 MiB", "peak max MiB", "request MiB", "used",
    )  # fmt: skip
    rows = [head]
    for u in usage.values():
        used = u.used()
        rows.append(
            (
                u.label,
                str(u.count),
                _num(u.wall_mean(), ".2f"),
                _num(max(u.wall) if u.wall else None, ".2f"),
                _num(u.cpu_mean(), ".2f"),
                _num(u.peak(50), ",.0f"),
                _num(u.peak(95), ",.0f"),
                _num(u.peak(100), ",.0f"),
                _num(u.request_mb, ",.0f"),
                "-" if used is None else f"{used:.0%}",
            )
        )
    widths = [max(len(row[k]) for row in rows) for k in range(len(head))]
    return "\n".join(
        "  ".join(
            c.ljust(w) if k == 0 else c.rjust(w)
            for k, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    )


def bps_block(usage: dict[str, LabelUsage], source: str) -> str:
    """A BPS ``pipetask:`` block: per label ``requestMemory`` (``BPS_MARGIN`` x the largest
    peak measured, MB, rounded up to a multiple of 64) and ``requestCpus`` (``cores``); labels
    without a measured peak are left out."""
    block: dict[str, Any] = {}
    for u in usage.values():
        top = u.peak(100)
        if top is None:
            continue
        memory = _BPS_STEP_MB * math.ceil(top * BPS_MARGIN / _BPS_STEP_MB)
        block[u.label] = {"requestMemory": int(memory), "requestCpus": u.cores()}
    note = (
        f"# From {source}: requestMemory is {BPS_MARGIN:g} x the largest peak measured per "
        f"label (MB, rounded up to {_BPS_STEP_MB}); requestCpus the median CPU / wall time.\n"
    )
    return note + yaml.safe_dump({"pipetask": block}, sort_keys=True)
