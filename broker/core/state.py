"""The graph state machine: which quanta wait, are ready, run, and how each ended.

Pure: plain values in, plain values out; no clock, sockets or processes. Quanta are the
graph's indices; state is one byte each, so a million quanta cost a few megabytes.

    PENDING --(parents done)--> READY --start--> RUNNING --succeed--> SUCCEEDED
       |                          ^                 |--fail/time out--> FAILED / TIMED_OUT
       +--follow (its last parent runs, it is sent behind it)-->     (descendants -> SKIPPED)
                                  +----requeue------+  (to PENDING while a parent is unfinished)
    any non-terminal --cancel--> CANCELLED
"""

from __future__ import annotations

import enum
from array import array
from collections.abc import Iterable

import numpy as np

from common.topology import Topology, as_numpy

__all__ = ["GraphState", "QState"]


class QState(enum.IntEnum):
    PENDING = 0
    READY = 1
    RUNNING = 2
    SUCCEEDED = 3
    FAILED = 4
    TIMED_OUT = 5
    SKIPPED = 6
    CANCELLED = 7

    @property
    def terminal(self) -> bool:
        return self >= QState.SUCCEEDED

    @property
    def word(self) -> str:
        return self.name.lower()


_STATES = list(QState)
_PENDING = int(QState.PENDING)  # (a plain int: compared per child on the hot path)


class GraphState:
    """Tracks every quantum of ``topology``. ``labels`` (a label number per quantum) and
    ``label_names`` give counts per label and state, so a status costs a constant per label,
    not a walk over the graph."""

    def __init__(self, topology: Topology, labels: Iterable[int], label_names: list[str]) -> None:
        self._t = topology
        n = topology.size
        waiting = np.bincount(as_numpy(topology.succ), minlength=n) if n else np.zeros(0)
        self._waiting: array[int] = array("i", waiting.astype(np.int32).tobytes())
        self._state = bytearray(n)  # QState values
        self.blocked_by: dict[int, set[int]] = {}
        self.failed: list[int] = []  # failed and timed-out quanta, in the order they ended
        self._open = n
        self._counts = [0] * len(_STATES)
        self._counts[QState.PENDING] = n
        self._labels: array[int] = array("I", labels)
        self.label_names = label_names
        self._by_label = [[0] * len(_STATES) for _ in label_names]
        if n:
            per_label = np.bincount(as_numpy(self._labels), minlength=len(label_names))
            for label, count in enumerate(per_label.tolist()):
                self._by_label[label][QState.PENDING] = count

    def state(self, i: int) -> QState:
        return _STATES[self._state[i]]

    def label_counts(self) -> dict[str, dict[QState, int]]:
        """Quanta per label and state (states with none left out)."""
        return {
            name: {s: n for s, n in zip(_STATES, counts, strict=True) if n}
            for name, counts in zip(self.label_names, self._by_label, strict=True)
        }

    def preset_succeeded(self, done: Iterable[int]) -> None:
        """Quanta finished by an earlier run (resume): call before ``initial_ready``."""
        for i in done:
            self._set(i, QState.SUCCEEDED)
            for child in self._t.successors(i):
                self._waiting[child] -= 1

    def initial_ready(self) -> list[int]:
        """Quanta whose parents are all done: call once, before anything starts."""
        free = np.flatnonzero(as_numpy(self._waiting) == 0)
        pending = np.frombuffer(self._state, dtype=np.uint8)[free] == QState.PENDING
        roots: list[int] = free[pending].tolist()
        for i in roots:
            self._set(i, QState.READY)
        return roots

    @property
    def finished(self) -> bool:
        return self._open == 0

    @property
    def unfinished(self) -> int:
        """Quanta not ended yet (running ones included)."""
        return self._open

    def count(self, state: QState) -> int:
        return self._counts[state]

    def _set(self, i: int, new: QState) -> None:
        old = self._state[i]
        if old >= QState.SUCCEEDED:
            raise ValueError(f"quantum #{i} is already {_STATES[old].word}")
        self._counts[old] -= 1
        self._counts[new] += 1
        counts = self._by_label[self._labels[i]]
        counts[old] -= 1
        counts[new] += 1
        self._state[i] = new
        if new >= QState.SUCCEEDED:
            self._open -= 1
        if new is QState.FAILED or new is QState.TIMED_OUT:
            self.failed.append(i)

    def _expect(self, i: int, *allowed: QState) -> None:
        if self._state[i] not in allowed:
            raise ValueError(
                f"quantum #{i} is {_STATES[self._state[i]].word}, expected "
                + " or ".join(s.word for s in allowed)
            )

    def start(self, i: int) -> None:
        self._expect(i, QState.READY)
        self._set(i, QState.RUNNING)

    def follow(self, i: int) -> None:
        """Sent to run right after its last unfinished parent, on the worker running that
        parent (a follow-on): PENDING -> RUNNING."""
        self._expect(i, QState.PENDING)
        self._set(i, QState.RUNNING)

    def one_parent_left(self, quanta: Iterable[int]) -> list[int]:
        """Those of ``quanta`` still PENDING on a single parent that has not succeeded."""
        waiting, state = self._waiting, self._state
        return [i for i in quanta if waiting[i] == 1 and state[i] == _PENDING]

    def requeue(self, i: int) -> bool:
        """A running quantum goes back (its worker was lost, or it never started): READY if
        its parents are done, else PENDING (a follow-on whose parent did not succeed).
        True if it is ready."""
        self._expect(i, QState.RUNNING)
        ready = self._waiting[i] == 0
        self._set(i, QState.READY if ready else QState.PENDING)
        return ready

    def succeed(self, i: int) -> list[int]:
        """Mark done; return the children that became ready."""
        self._expect(i, QState.RUNNING, QState.READY)
        self._set(i, QState.SUCCEEDED)
        ready = []
        waiting, state = self._waiting, self._state
        for child in self._t.successors(i):
            waiting[child] -= 1
            if waiting[child] == 0 and state[child] == QState.PENDING:
                self._set(child, QState.READY)
                ready.append(child)
        return ready

    def fail(self, i: int, *, timed_out: bool = False) -> list[int]:
        """Mark failed (or timed out); skip every unfinished descendant. Returns the skipped."""
        self._expect(i, QState.RUNNING, QState.READY)
        self._set(i, QState.TIMED_OUT if timed_out else QState.FAILED)
        skipped = []
        for d in self.descendants(i):
            self.blocked_by.setdefault(d, set()).add(i)
            if self._state[d] < QState.SUCCEEDED:
                self._set(d, QState.SKIPPED)
                skipped.append(d)
        return skipped

    def descendants(self, i: int) -> list[int]:
        seen = {i}
        todo = [i]
        out = []
        while todo:
            for child in self._t.successors(todo.pop()):
                if child not in seen:
                    seen.add(child)
                    todo.append(child)
                    out.append(child)
        return out

    def cancel(self, targets: Iterable[int] | None = None) -> list[int]:
        """Cancel the given (default: all) unfinished quanta; returns those cancelled."""
        if targets is None:
            open_ = np.frombuffer(self._state, dtype=np.uint8) < QState.SUCCEEDED
            targets = np.flatnonzero(open_).tolist()
        cancelled = [i for i in targets if self._state[i] < QState.SUCCEEDED]
        for i in cancelled:
            self._set(i, QState.CANCELLED)
        return cancelled

    def in_state(self, state: QState) -> list[int]:
        found: list[int] = np.flatnonzero(np.frombuffer(self._state, np.uint8) == state).tolist()
        return found
