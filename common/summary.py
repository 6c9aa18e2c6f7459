"""Reading a summary file (``--summary``) as a stream: ``Report.write_json`` puts one quantum
per line, so a million-quantum summary is read line by line, its entries parsed as they are
iterated and never all held. Any other JSON report is parsed whole. Reads only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from common.report import Entry, QuantumDetails, QuantumReport, Report

__all__ = ["read_summary"]

_REPORTS = b'"quantaReports": ['
_DETAILS = b'"quantaDetails": {'
_FIGURES = b'"runFigures": '


def read_summary(path: Path) -> Report:
    """The report in ``path``; OSError if unreadable, ValueError naming what is malformed."""
    with path.open("rb") as f:
        head = _head(f)
        if head is None:  # not our line layout: the whole document at once
            f.seek(0)
            return Report.from_json(f.read().decode())
        reports_at = f.tell()
        count = _skip_to(f, b"],")
        if f.readline().rstrip(b"\r\n") != _DETAILS:
            raise ValueError(f"not a zmpexec report: no quantaDetails after {count} quanta")
        details_at = f.tell()
        _skip_to(f, b"},")
        figures_line = f.readline().strip()
    if not figures_line.startswith(_FIGURES) or not figures_line.endswith(b"}"):
        raise ValueError("not a zmpexec report: no runFigures at its end")
    try:
        report = Report.from_run_fields(head)
        figures = json.loads(figures_line[len(_FIGURES) : -1])
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as e:
        raise ValueError(f"not a zmpexec report: missing or malformed {e}") from e
    report.figures = {
        str(k): v
        for k, v in figures.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    # Entries are parsed when iterated: a malformed line raises ValueError then.
    report.set_entries(lambda: _entries(path, reports_at, details_at))
    return report


def _head(f: BinaryIO) -> dict[str, object] | None:
    """The run-level fields, up to the quantaReports line; None if the layout is not ours."""
    lines: list[bytes] = []
    for line in f:
        line = line.rstrip(b"\r\n")
        if line == _REPORTS:
            text = b"\n".join(lines).rstrip(b",") + b"}"
            try:
                head = json.loads(text)
            except json.JSONDecodeError:
                return None
            return head if isinstance(head, dict) else None
        lines.append(line)
        if len(lines) > 1000:  # our head is a handful of lines
            return None
    return None


def _skip_to(f: BinaryIO, end: bytes) -> int:
    """Lines up to and including ``end``; ValueError if the file ends first."""
    for n, line in enumerate(f):
        if line.rstrip(b"\r\n") == end:
            return n
    raise ValueError("not a zmpexec report: it ends in the middle")


_decode = json.JSONDecoder().decode  # json.loads' per-call checks cost a third at 10^6 lines


def _entries(path: Path, reports_at: int, details_at: int) -> Iterator[Entry]:
    with path.open("rb") as reports, path.open("rb") as details:
        reports.seek(reports_at)
        details.seek(details_at)
        for n, raw in enumerate(reports):
            line = raw.decode().rstrip("\r\n")
            if line == "],":
                return
            key, _, value = details.readline().decode().partition(": ")
            try:
                r = QuantumReport.from_dict(_decode(line.rstrip(",")))
                d = QuantumDetails.from_dict(_decode(value.rstrip(",\r\n")))
                if key.strip('"') != r.quantumId:
                    raise ValueError(f"details of {key} beside {r.quantumId}")
            except (KeyError, TypeError, AttributeError, ValueError) as e:
                raise ValueError(f"not a zmpexec report: quantum {n + 1}: {e}") from e
            yield r, d
