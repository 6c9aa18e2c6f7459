"""Hostile frames for codec and fuzz tests: a message with some fields replaced by raw wire
values, and, for every field of a message, frames carrying a value of the wrong type."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterator
from typing import Any

import msgpack

from common.codec import encode
from common.protocol import (
    Assign,
    Cancel,
    ExecutorExited,
    Goodbye,
    Heartbeat,
    Hello,
    Message,
    Preempt,
    Ready,
    Refuse,
    Result,
    ResultStatus,
    Revoke,
    Revoked,
    Shutdown,
    StatusReply,
    StatusRequest,
    Welcome,
)
from common.quantum import Quantum
from common.report import Reason

__all__ = ["EVERY_MESSAGE", "Q", "frame_with", "wrong_type_frames"]

Q = Quantum(
    id="isr-1",
    task_label="isr",
    task="pkg.mod:isr",
    data_id={"visit": 1, "det": "a"},
    inputs={"raw": "raw-1"},
    outputs={"out": "postisr-1"},
    config={"gain": 1.5},
    timeout_s=3.0,
)

EVERY_MESSAGE: list[Message] = [
    Hello(pid=12, host="node", slots=1),
    Welcome(
        worker_id="w1",
        heartbeat_interval_s=0.5,
        liveness=3,
        executor=b"\x80\x04.",
        log_dir="/tmp/logs",
        preload=["pkg.tasks", "other"],
        max_quanta_per_executor=None,
        max_rss_kb=1024,
        executor_link="/tmp/zl1/exec.sock",
    ),
    Ready(worker_id="w1", pid=12, generation=1),
    Refuse(reason="version"),
    Assign(quantum=Q, attempt=2, timeout_s=None, seq=0),
    Assign(quantum=Q, attempt=1, timeout_s=1.5, seq=7),
    Assign(quantum=Q, attempt=1, timeout_s=None, seq=8, after=7),
    Result(
        "isr-1",
        1,
        ResultStatus.FAILURE,
        -11,
        None,
        "killed by signal 11 (SIGSEGV)",
        Reason.SIGNAL,
        1.0,
        2.0,
        1.0,
        2048,
        "/tmp/logs/isr-1.log",
    ),
    Result("isr-1", 1, ResultStatus.SUCCESS, 0, None, None, None, 1.0, 2.0, 1.0, None, None),
    Result(
        "x",
        2,
        ResultStatus.FAILURE,
        21,
        "InvalidQuantumError",
        "bad",
        Reason.EXCEPTION,
        1.0,
        2.0,
        1.0,
        None,
        None,
        stop_run=True,
    ),
    Heartbeat(),
    Heartbeat(rss_kb=1_500_000),
    Shutdown(reason="done", grace_s=2.5),
    StatusRequest(),
    StatusReply(status={"total": 3, "by_label": {"a": {"running": 1}}, "eta_s": None}),
    Cancel(abort=True),
    Revoke("q1", 2, 5),
    Revoked("q1", 2),
    Preempt("q1", 2, 5),
    Assign(quantum=Q, attempt=1, timeout_s=None, seq=9, memory_mb=2048.0, cpus=4),
    Goodbye(reason="SIGTERM"),
    ExecutorExited(
        generation=2,
        last_seq=9,
        running=True,
        status=ResultStatus.TIMEOUT,
        exit_code=-14,
        reason=Reason.TIMEOUT,
        detail="timed out after 1s",
        start_time=1.0,
        end_time=2.0,
        log_path=None,
    ),
    ExecutorExited(2, 0, False, ResultStatus.FAILURE, 0, None, "", 1.0, 1.0, None),
]


_WRONG: dict[type, list[object]] = {
    str: [3, None, b"bytes", ["x"]],
    int: ["3", 1.5, True, None, [1]],
    float: ["1.0", True, None, {}],
    bytes: ["text", 3, None],
    bool: [1, "true", None],
    list: ["a,b", {"a": 1}, None, [1]],
    dict: [[1, 2], "x", None],
}


def frame_with(message: Message, **changes: Any) -> bytes:
    """``message`` encoded, then fields named in ``changes`` replaced by those raw values."""
    raw = msgpack.unpackb(encode(message), raw=False)
    names = [f.name for f in dataclasses.fields(message)]
    for name, value in changes.items():
        raw[2 + names.index(name)] = value
    return bytes(msgpack.packb(raw, use_bin_type=True))


def _wrong_values(value: object) -> list[object]:
    if isinstance(value, Quantum):
        return [None, "quantum", {"id": 3}, [1]]
    if value is None:
        return [b"\x00", {"a": 1}, [None]]
    for kind in (bool, int, float, bytes, str, list, dict):
        if isinstance(value, kind):
            return _WRONG[kind]
    raise AssertionError(f"no wrong values for {value!r}")


def wrong_type_frames(message: Message) -> Iterator[tuple[str, bytes]]:
    """(field name, frame) for every field of ``message`` and every wrong-typed value of it
    (None only where the field is not optional)."""
    hints = typing.get_type_hints(type(message))
    for f in dataclasses.fields(message):
        optional = type(None) in typing.get_args(hints[f.name])
        for wrong in _wrong_values(getattr(message, f.name)):
            if wrong is None and optional:
                continue
            yield f.name, frame_with(message, **{f.name: wrong})
