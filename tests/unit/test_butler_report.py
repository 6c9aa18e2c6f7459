"""The embedded butler and the report model."""

from __future__ import annotations

import io
import json
import pickle
import uuid
from pathlib import Path

import pytest

from common.butler import Butler
from common.errors import ButlerError, DatasetNotFoundError
from common.report import (
    ExceptionInfo,
    ExecutionStatus,
    QuantumDetails,
    QuantumReport,
    Reason,
    Report,
    lsst_quantum_id,
)


def test_put_get_exists_and_refusing_overwrite(butler: Butler) -> None:
    butler.put("a/b c", {"x": [1, 2]})
    assert butler.exists("a/b c") and not butler.exists("other")
    assert butler.get("a/b c") == {"x": [1, 2]}
    with pytest.raises(ButlerError, match="already exists"):
        butler.put("a/b c", 3)
    butler.put("a/b c", 3, replace=True)
    assert butler.get("a/b c") == 3
    with pytest.raises(DatasetNotFoundError, match="'nope' not found"):
        butler.get("nope")


def test_butler_pickles_to_its_root_and_sees_the_same_data(butler: Butler) -> None:
    butler.put("d", 42)
    again = pickle.loads(pickle.dumps(butler))
    assert again.root == butler.root and again.get("d") == 42


def test_failed_write_leaves_nothing_registered_or_behind(butler: Butler) -> None:
    class Unpicklable:
        def __reduce__(self) -> tuple[object, ...]:
            raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        butler.put("bad", Unpicklable())
    assert not butler.exists("bad")
    assert list((butler.root / "store" / butler.run).glob(".tmp-*")) == []


def test_runs_are_separate(tmp_path: Path) -> None:
    a, b = Butler(tmp_path, "a"), Butler(tmp_path, "b")
    a.put("d", 1)
    assert not b.exists("d")


def test_quantum_ids_map_to_stable_uuids() -> None:
    u = str(uuid.uuid4())
    assert lsst_quantum_id(u) == u
    assert lsst_quantum_id("isr-1") == lsst_quantum_id("isr-1") != lsst_quantum_id("isr-2")
    uuid.UUID(lsst_quantum_id("isr-1"))


def test_report_json_has_lsst_fields_and_round_trips() -> None:
    key = lsst_quantum_id("a")
    report = Report(
        taskCounts={"t": 1},
        status=ExecutionStatus.FAILURE,
        exitCode=1,
        exceptionInfo=ExceptionInfo("MPGraphExecutorError", "1 failed"),
        quantaReports=[
            QuantumReport(
                key,
                "t",
                {"visit": 1},
                ExecutionStatus.FAILURE,
                1,
                ExceptionInfo("ValueError", "boom"),
            )
        ],
        quantaDetails={key: QuantumDetails("a", Reason.EXCEPTION, "boom", 1, "w1", 1.0, 2.0)},
    )
    data = report.to_dict()
    assert set(data) == {
        "qgraphSummary",
        "status",
        "cmdLine",
        "exitCode",
        "exceptionInfo",
        "quantaReports",
        "quantaDetails",
        "runFigures",
    }
    assert data["qgraphSummary"]["qgraphTaskSummaries"]["t"]["numQuanta"] == 1
    assert Report.from_json(report.to_json()) == report


def test_from_json_rejects_other_documents() -> None:
    with pytest.raises(ValueError, match="not a zmpexec report"):
        Report.from_json('{"hello": 1}')


def test_streamed_summary_is_the_same_json_as_to_json() -> None:
    report = Report(taskCounts={"t": 3}, status=ExecutionStatus.FAILURE, exitCode=1)
    report.figures["peakIntermediates"] = 2
    for i, status in enumerate((ExecutionStatus.SUCCESS, ExecutionStatus.FAILURE)):
        key = lsst_quantum_id(f"q{i}")
        report.quantaReports.append(QuantumReport(key, "t", {"i": i}, status, 0))
        report.quantaDetails[key] = QuantumDetails(id=f"q{i}", attempts=1, blockedBy=("x",))
    for r in (report, Report(taskCounts={})):
        out = io.StringIO()
        r.write_json(out)
        assert json.loads(out.getvalue()) == json.loads(r.to_json())
        assert Report.from_json(out.getvalue()) == r


def test_a_summary_file_is_read_as_a_stream_and_damage_is_named(tmp_path: Path) -> None:
    from common.summary import read_summary

    # Given a summary written by write_json, and the same report as indented JSON
    report = Report(taskCounts={"t": 3}, status=ExecutionStatus.FAILURE, exitCode=1)
    report.figures["peakIntermediates"] = 2
    for i, status in enumerate((ExecutionStatus.SUCCESS, ExecutionStatus.SKIPPED) * 2):
        key = lsst_quantum_id(f"q{i}")
        report.quantaReports.append(QuantumReport(key, "t", {"i": i}, status, None))
        report.quantaDetails[key] = QuantumDetails(id=f"q{i}", attempts=1, startTime=float(i))
    with (tmp_path / "s.json").open("w") as f:
        report.write_json(f)
    (tmp_path / "indented.json").write_text(report.to_json(indent=2))
    # When read back, both are the same report, counted without a whole parse of the first
    for name in ("s.json", "indented.json"):
        again = read_summary(tmp_path / name)
        assert again.counts()[ExecutionStatus.SKIPPED] == 2
        assert again == report
    # And a damaged quantum line is named when the entries are read
    lines = (tmp_path / "s.json").read_text().splitlines()
    lines[lines.index('"quantaReports": [') + 3] = '{"status": "no such status"},'
    (tmp_path / "bad.json").write_text("\n".join(lines))
    with pytest.raises(ValueError, match="quantum 3"):
        list(read_summary(tmp_path / "bad.json").entries())
    (tmp_path / "cut.json").write_text("\n".join(lines[:8]))
    with pytest.raises(ValueError, match="ends in the middle"):
        read_summary(tmp_path / "cut.json")


@pytest.mark.parametrize("qid", ["a", "isr-v12-d34", "ü/ñ", "x" * 36, "0" * 37])
def test_report_ids_of_non_uuid_quanta_are_their_uuid5(qid: str) -> None:
    from common import report as report_module

    expected = str(uuid.uuid5(report_module._ID_NAMESPACE, qid))
    assert lsst_quantum_id(qid) == expected
    assert lsst_quantum_id(expected) == expected  # a UUID stays itself
