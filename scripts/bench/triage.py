"""Triage at scale: a summary of N quanta (default 10^5) in 5 task labels, where one quantum
in 10 fails (4 exception types, each with its own message and log) and one in 10 is skipped
behind a failure, written as ``zmpexec run --summary`` writes it; then ``zmpexec report FILE``
and ``zmpexec report FILE --json`` as the user runs them: wall time, the reader's peak RSS
and the lines shown.

    python -m scripts.bench.triage [--quanta 100000]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from common.report import (
    Entry,
    ExceptionInfo,
    ExecutionStatus,
    QuantumDetails,
    QuantumReport,
    Reason,
    Report,
    lsst_quantum_id,
)

LABELS = ("isr", "calibrate", "characterize", "coadd", "measure")
ERRORS = ("ValueError", "RuntimeError", "MemoryError", "AlgorithmError")


def _entries(n: int) -> Iterator[Entry]:
    for i in range(n):
        qid = f"q{i:07d}"
        label = LABELS[i % len(LABELS)]
        data_id = {"visit": i // 100, "detector": i % 100}
        exc = None
        if i % 10 == 3:
            status, kind = ExecutionStatus.FAILURE, ERRORS[(i // 10) % len(ERRORS)]
            exc = ExceptionInfo(kind, f"{kind} on visit {i // 100} detector {i % 100}")
            details = QuantumDetails(
                qid, reason=Reason.EXCEPTION, attempts=1, logPath=f"/logs/{qid}.log"
            )
        elif i % 10 == 7:
            status = ExecutionStatus.SKIPPED
            details = QuantumDetails(
                qid, reason=Reason.UPSTREAM_FAILURE, blockedBy=(f"q{i - 4:07d}",)
            )
        else:
            status = ExecutionStatus.SUCCESS
            details = QuantumDetails(qid, attempts=1, startTime=1.0, endTime=2.0, worker="w1")
        report = QuantumReport(lsst_quantum_id(qid), label, data_id, status, None, exc)
        yield report, details


def _write(path: Path, n: int) -> None:
    report = Report(taskCounts={label: n // len(LABELS) for label in LABELS})
    report.status = ExecutionStatus.FAILURE
    report.set_entries(lambda: _entries(n))
    with path.open("w") as stream:
        report.write_json(stream)


def _timed(argv: list[str]) -> tuple[float, float, int]:
    """Wall seconds, peak RSS (MiB) of the command, lines it printed."""
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.monotonic()
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.monotonic() - t0
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak <= before:
        peak = 0  # (a smaller child than one before: not known)
    return wall, peak / 1024, len(out.stdout.splitlines())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quanta", type=int, default=100_000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="zmptriage-") as tmp:
        summary = Path(tmp) / "s.json"
        t0 = time.monotonic()
        _write(summary, args.quanta)
        size = summary.stat().st_size / 2**20
        print(f"summary: {args.quanta:,} quanta, {size:.0f} MiB, {time.monotonic() - t0:.1f}s")
        print("| command | wall s | peak RSS MiB | lines |")
        print("|---|---|---|---|")
        for extra in ([], ["--json"]):
            argv = [sys.executable, "-m", "scripts.cli", "report", str(summary), *extra]
            wall, rss, lines = _timed(argv)
            shown = " ".join(["zmpexec report", *extra])
            print(f"| {shown} | {wall:.2f} | {rss:.0f} | {lines} |", flush=True)


if __name__ == "__main__":
    main()
