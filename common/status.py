"""A live run's status: what ``zmpexec status`` prints and the progress display draws.

Plain data with a dict form for the wire (a STATUS reply carries ``to_dict()``); no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["FailureInfo", "ResourceUse", "RunStatus", "RunningInfo", "WaitingInfo", "WorkerSummary"]


@dataclass(frozen=True, slots=True)
class RunningInfo:
    id: str
    label: str
    worker: str
    elapsed_s: float


@dataclass(frozen=True, slots=True)
class FailureInfo:
    id: str
    label: str
    reason: str
    message: str
    log_path: str | None


@dataclass(frozen=True, slots=True)
class WorkerSummary:
    id: str
    pid: int
    host: str
    local: bool
    in_flight: int
    completed: int


@dataclass(frozen=True, slots=True)
class ResourceUse:
    """One budget: how much of it the quanta sent to workers hold (memory in MiB)."""

    name: str
    used: float
    budget: float


@dataclass(frozen=True, slots=True)
class WaitingInfo:
    """A ready quantum that did not start at the last dispatch, and why."""

    id: str
    label: str
    why: str


@dataclass(frozen=True, slots=True)
class RunStatus:
    """``by_label`` maps task label -> state -> count (states as in the graph state
    machine: pending, ready, running, succeeded, failed, timed_out, skipped, cancelled)."""

    elapsed_s: float
    total: int
    by_label: dict[str, dict[str, int]]
    running: list[RunningInfo] = field(default_factory=list)
    failures: list[FailureInfo] = field(default_factory=list)
    workers: list[WorkerSummary] = field(default_factory=list)
    throughput_per_s: float = 0.0
    eta_s: float | None = None
    stopping: str | None = None
    resources: list[ResourceUse] = field(default_factory=list)
    waiting: list[WaitingInfo] = field(default_factory=list)  # the first few, in order

    def count(self, state: str) -> int:
        return sum(states.get(state, 0) for states in self.by_label.values())

    @property
    def finished(self) -> int:
        return sum(
            self.count(s) for s in ("succeeded", "failed", "timed_out", "skipped", "cancelled")
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "elapsed_s": self.elapsed_s,
            "total": self.total,
            "by_label": self.by_label,
            "running": [vars_of(r) for r in self.running],
            "failures": [vars_of(f) for f in self.failures],
            "workers": [vars_of(w) for w in self.workers],
            "throughput_per_s": self.throughput_per_s,
            "eta_s": self.eta_s,
            "stopping": self.stopping,
            "resources": [vars_of(r) for r in self.resources],
            "waiting": [vars_of(w) for w in self.waiting],
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunStatus:
        """ValueError (with the cause) when ``raw`` is not a status."""
        try:
            return cls(
                elapsed_s=float(raw["elapsed_s"]),
                total=int(raw["total"]),
                by_label={
                    str(k): {str(s): int(n) for s, n in v.items()}
                    for k, v in raw["by_label"].items()
                },
                running=[RunningInfo(**r) for r in raw.get("running", [])],
                failures=[FailureInfo(**f) for f in raw.get("failures", [])],
                workers=[WorkerSummary(**w) for w in raw.get("workers", [])],
                throughput_per_s=float(raw.get("throughput_per_s", 0.0)),
                eta_s=None if raw.get("eta_s") is None else float(raw["eta_s"]),
                stopping=raw.get("stopping"),
                resources=[ResourceUse(**r) for r in raw.get("resources", [])],
                waiting=[WaitingInfo(**w) for w in raw.get("waiting", [])],
            )
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise ValueError(f"not a run status: {e}") from e


def vars_of(record: Any) -> dict[str, Any]:
    return {name: getattr(record, name) for name in record.__slots__}
