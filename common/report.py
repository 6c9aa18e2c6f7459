"""The run report in LSST's ``Report``/``QuantumReport`` JSON shape, plus our ``quantaDetails``.

LSST's quantum reports reject unknown keys, so every extension lives in the top-level
``quantaDetails`` object keyed by the LSST ``quantumId``. Pure data: no I/O beyond JSON text.
"""

from __future__ import annotations

import enum
import hashlib
import json
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

__all__ = [
    "AttemptDetails",
    "Caveat",
    "Entry",
    "ExceptionInfo",
    "ExecutionStatus",
    "QuantumDetails",
    "QuantumReport",
    "Reason",
    "Report",
    "lsst_quantum_id",
]

# Stable namespace so a non-UUID quantum id always maps to the same report quantumId.
_ID_NAMESPACE = uuid.UUID("5b0e2a0c-6c64-4d1b-9c38-3f0f6f2a9d11")
_NAMESPACE_BYTES = _ID_NAMESPACE.bytes


class ExecutionStatus(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    TIMEOUT = "timeout"
    SKIPPED = "skipped"


class Reason(enum.StrEnum):
    """Why a quantum did not succeed (our extension, in ``quantaDetails``)."""

    EXCEPTION = "exception"
    EXIT_CODE = "exit_code"
    SIGNAL = "signal"
    TIMEOUT = "timeout"
    WORKER_LOST = "worker_lost"
    UPSTREAM_FAILURE = "upstream_failure"
    CANCELLED = "cancelled"
    MEMORY = "memory"  # past its memory request, killed by the kernel, or a MemoryError
    PROTOCOL = "protocol_error"

    @classmethod
    def _missing_(cls, value: object) -> Reason | None:
        return cls.MEMORY if value == "out_of_memory" else None  # summaries before "memory"


class Caveat(enum.StrEnum):
    """A success with a note (our extension, in ``quantaDetails``): the task found no work
    (LSST's ``NoWorkFound``, in ``adjustQuantum`` or ``runQuantum``), its outputs existed
    already so it did not run (LSST's skip-existing), or some outputs are missing (LSST's
    partial outputs)."""

    NO_WORK = "no_work"
    SKIPPED_EXISTING = "skipped_existing"
    PARTIAL_OUTPUTS = "partial_outputs"


def lsst_quantum_id(qid: str) -> str:
    """The quantum's id when it is a UUID, else a stable uuid5 of it (computed directly: a
    summary of a million quanta makes a million of them)."""
    if len(qid) == 36:
        try:
            return str(uuid.UUID(qid))
        except ValueError:
            pass
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + qid.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(frozen=True, slots=True)
class ExceptionInfo:
    className: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"className": self.className, "message": self.message}

    @classmethod
    def from_dict(cls, d: dict[str, str] | None) -> ExceptionInfo | None:
        return cls(d["className"], d["message"]) if d else None


@dataclass(frozen=True, slots=True)
class QuantumReport:
    """Exactly LSST's fields; ``quantumId`` is a UUID string."""

    quantumId: str
    taskLabel: str
    dataId: Mapping[str, int | str]
    status: ExecutionStatus
    exitCode: int | None = None
    exceptionInfo: ExceptionInfo | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "dataId": dict(self.dataId),
            "taskLabel": self.taskLabel,
            "exitCode": self.exitCode,
            "exceptionInfo": self.exceptionInfo.to_dict() if self.exceptionInfo else None,
            "quantumId": self.quantumId,
        }

    @classmethod
    def from_dict(cls, r: dict[str, Any]) -> QuantumReport:
        return cls(
            quantumId=r["quantumId"],
            taskLabel=r["taskLabel"],
            dataId=r["dataId"],
            status=ExecutionStatus(r["status"]),
            exitCode=r.get("exitCode"),
            exceptionInfo=ExceptionInfo.from_dict(r.get("exceptionInfo")),
        )


@dataclass(frozen=True, slots=True)
class AttemptDetails:
    """An earlier attempt of a quantum that was tried again: its memory request (MiB, if
    declared), its own peak (KiB), why it ended, and how long it ran (seconds)."""

    attempt: int
    memoryRequest: float | None
    maxRss: int | None
    reason: Reason | None
    wallTime: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "memoryRequest": self.memoryRequest,
            "maxRss": self.maxRss,
            "reason": self.reason.value if self.reason else None,
            "wallTime": self.wallTime,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AttemptDetails:
        return cls(
            attempt=int(d["attempt"]),
            memoryRequest=d.get("memoryRequest"),
            maxRss=d.get("maxRss"),
            reason=Reason(d["reason"]) if d.get("reason") else None,
            wallTime=d.get("wallTime"),
        )


@dataclass(frozen=True, slots=True)
class QuantumDetails:
    """Our extensions for one quantum; times are wall-clock epoch seconds. ``maxRss`` (KiB)
    is the last attempt's own peak over its process tree, ``cpuTime`` its user + system CPU
    seconds (children included), ``wallTime`` how long it ran, ``memoryRequest`` the memory it
    declared (MiB); ``earlier``: the attempts before it, where it was tried again;
    ``putBack``: how often memory pressure stopped it and put it back in the queue;
    ``caveat``: the note on a success, if any."""

    id: str
    reason: Reason | None = None
    message: str | None = None
    attempts: int = 0
    worker: str | None = None
    startTime: float | None = None
    endTime: float | None = None
    maxRss: int | None = None
    logPath: str | None = None
    blockedBy: tuple[str, ...] = ()
    cpuTime: float | None = None
    wallTime: float | None = None
    memoryRequest: float | None = None
    earlier: tuple[AttemptDetails, ...] = ()
    putBack: int = 0
    caveat: Caveat | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "reason": self.reason.value if self.reason else None,
            "message": self.message,
            "attempts": self.attempts,
            "worker": self.worker,
            "startTime": self.startTime,
            "endTime": self.endTime,
            "maxRss": self.maxRss,
            "logPath": self.logPath,
            "blockedBy": list(self.blockedBy),
            "cpuTime": self.cpuTime,
            "wallTime": self.wallTime,
            "memoryRequest": self.memoryRequest,
            "earlier": [a.to_dict() for a in self.earlier],
            "putBack": self.putBack,
            "caveat": self.caveat.value if self.caveat else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuantumDetails:
        return cls(
            id=d["id"],
            reason=Reason(d["reason"]) if d.get("reason") else None,
            message=d.get("message"),
            attempts=d.get("attempts", 0),
            worker=d.get("worker"),
            startTime=d.get("startTime"),
            endTime=d.get("endTime"),
            maxRss=d.get("maxRss"),
            logPath=d.get("logPath"),
            blockedBy=tuple(d.get("blockedBy", ())),
            cpuTime=d.get("cpuTime"),
            wallTime=d.get("wallTime"),
            memoryRequest=d.get("memoryRequest"),
            earlier=tuple(AttemptDetails.from_dict(a) for a in d.get("earlier") or ()),
            putBack=int(d.get("putBack") or 0),
            caveat=Caveat(d["caveat"]) if d.get("caveat") else None,
        )


Entry = tuple[QuantumReport, QuantumDetails]


class Report:
    """The whole run: status, per-quantum reports, and our details keyed by quantumId.

    A broker's report builds its per-quantum entries on demand (``set_entries``): writing the
    summary of a million quanta streams them; ``quantaReports``/``quantaDetails`` build the
    lists when first read."""

    def __init__(
        self,
        taskCounts: dict[str, int],
        status: ExecutionStatus = ExecutionStatus.SUCCESS,
        exitCode: int | None = None,
        exceptionInfo: ExceptionInfo | None = None,
        cmdLine: list[str] | None = None,
        quantaReports: list[QuantumReport] | None = None,
        quantaDetails: dict[str, QuantumDetails] | None = None,
        figures: dict[str, float] | None = None,
    ) -> None:
        self.taskCounts = taskCounts
        self.status = status
        self.exitCode = exitCode
        self.exceptionInfo = exceptionInfo
        self.cmdLine = list(sys.argv) if cmdLine is None else cmdLine
        self._reports = quantaReports if quantaReports is not None else []
        self._details = quantaDetails if quantaDetails is not None else {}
        self._source: Callable[[], Iterator[Entry]] | None = None
        self._counts: dict[ExecutionStatus, int] | None = None
        self.figures = figures if figures is not None else {}  # of the run (peakIntermediates)

    def set_entries(
        self,
        source: Callable[[], Iterator[Entry]],
        counts: dict[ExecutionStatus, int] | None = None,
    ) -> None:
        """Per-quantum entries come from ``source`` (called per use); ``counts`` by status
        if known (else counted when asked)."""
        self._source, self._counts = source, counts

    def entries(self) -> Iterator[Entry]:
        if self._source is not None:
            return self._source()
        return (
            (r, self._details.get(r.quantumId) or QuantumDetails(r.quantumId))
            for r in self._reports
        )

    def _materialize(self) -> None:
        if self._source is not None:
            reports, details = [], {}
            for r, d in self._source():
                reports.append(r)
                details[r.quantumId] = d
            self._reports, self._details, self._source = reports, details, None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Report) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    @property
    def quantaReports(self) -> list[QuantumReport]:
        self._materialize()
        return self._reports

    @property
    def quantaDetails(self) -> dict[str, QuantumDetails]:
        self._materialize()
        return self._details

    def details(self, qid: str) -> QuantumDetails:
        """Our details for quantum ``qid`` (our id, not the LSST uuid)."""
        return self.quantaDetails[lsst_quantum_id(qid)]

    def report_for(self, qid: str) -> QuantumReport:
        key = lsst_quantum_id(qid)
        for r in self.quantaReports:
            if r.quantumId == key:
                return r
        raise KeyError(qid)

    def counts(self) -> dict[ExecutionStatus, int]:
        if self._counts is None or self._source is None:
            counts = dict.fromkeys(ExecutionStatus, 0)
            for r, _ in self.entries():
                counts[r.status] += 1
            if self._source is None:
                return counts
            self._counts = counts
        return dict(self._counts)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self._run_fields(),
            "quantaReports": [r.to_dict() for r in self.quantaReports],
            "quantaDetails": {k: d.to_dict() for k, d in self.quantaDetails.items()},
            "runFigures": dict(self.figures),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def write_json(self, stream: TextIO) -> None:
        """The same JSON as ``to_json`` (compact, one quantum per line), written item by item:
        a big run's summary is never held as one dict or one string."""
        head = self._run_fields()
        stream.write("{")
        for key, value in head.items():
            stream.write(f"{json.dumps(key)}: {json.dumps(value)},\n")
        stream.write('"quantaReports": [')
        # One pass over the entries (each is built from the run's arrays): details wait in a
        # temporary file until the reports are written.
        with tempfile.TemporaryFile("w+") as details:
            for i, (r, d) in enumerate(self.entries()):
                sep = "\n" if i == 0 else ",\n"
                stream.write(sep + json.dumps(r.to_dict()))
                details.write(f"{sep}{json.dumps(r.quantumId)}: {json.dumps(d.to_dict())}")
            stream.write('\n],\n"quantaDetails": {')
            details.seek(0)
            shutil.copyfileobj(details, stream)
        stream.write(f'\n}},\n"runFigures": {json.dumps(self.figures)}}}\n')

    def _run_fields(self) -> dict[str, Any]:
        """The run-level fields: everything but the per-quantum collections and figures."""
        return {
            "qgraphSummary": {
                "qgraphTaskSummaries": {
                    label: {"taskLabel": label, "numQuanta": n}
                    for label, n in sorted(self.taskCounts.items())
                }
            },
            "status": self.status.value,
            "cmdLine": self.cmdLine,
            "exitCode": self.exitCode,
            "exceptionInfo": self.exceptionInfo.to_dict() if self.exceptionInfo else None,
        }

    @classmethod
    def from_json(cls, text: str) -> Report:
        """Parse a report written by ``to_json`` (ValueError with the cause if malformed)."""
        try:
            raw = json.loads(text)
            return cls._from_dict(raw)
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"not a zmpexec report: missing or malformed {e}") from e

    @classmethod
    def _from_dict(cls, raw: dict[str, Any]) -> Report:
        report = cls.from_run_fields(raw)
        report._reports = [QuantumReport.from_dict(r) for r in raw.get("quantaReports", [])]
        report._details = {
            k: QuantumDetails.from_dict(d) for k, d in raw.get("quantaDetails", {}).items()
        }
        return report

    @classmethod
    def from_run_fields(cls, raw: dict[str, Any]) -> Report:
        """A report of the run-level fields of a summary (no quanta yet)."""
        summaries = raw["qgraphSummary"].get("qgraphTaskSummaries", {})
        return cls(
            taskCounts={label: int(s["numQuanta"]) for label, s in summaries.items()},
            status=ExecutionStatus(raw.get("status", "success")),
            exitCode=raw.get("exitCode"),
            exceptionInfo=ExceptionInfo.from_dict(raw.get("exceptionInfo")),
            cmdLine=list(raw.get("cmdLine") or []),
            figures={
                str(k): v
                for k, v in raw.get("runFigures", {}).items()
                if isinstance(v, int | float) and not isinstance(v, bool)
            },
        )
