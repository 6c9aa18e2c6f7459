"""The codec: every message round-trips; anything malformed raises ProtocolError."""

from __future__ import annotations

import random

import msgpack
import pytest

from common.codec import MAX_FRAME_BYTES, decode, encode
from common.errors import ProtocolError, ProtocolVersionError
from common.protocol import (
    PROTOCOL_VERSION,
    Assign,
    Cancel,
    Goodbye,
    Heartbeat,
    Hello,
    Message,
    MessageType,
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
    ),
    Ready(),
    Refuse(reason="version"),
    Assign(quantum=Q, attempt=2, timeout_s=None),
    Assign(quantum=Q, attempt=1, timeout_s=1.5),
    Result(
        "isr-1",
        1,
        ResultStatus.FAILURE,
        -11,
        None,
        "killed by signal 11 (SIGSEGV)",
        "signal",
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
        "exception",
        1.0,
        2.0,
        1.0,
        None,
        None,
        stop_run=True,
    ),
    Heartbeat(),
    Shutdown(reason="done", grace_s=2.5),
    StatusRequest(),
    StatusReply(status={"total": 3, "by_label": {"a": {"running": 1}}, "eta_s": None}),
    Cancel(abort=True),
    Revoke("q1", 2),
    Revoked("q1", 2),
    Goodbye(reason="SIGTERM"),
]


def test_every_message_type_has_a_round_trip_case() -> None:
    assert {type(m) for m in EVERY_MESSAGE} == {
        Hello,
        Welcome,
        Ready,
        Refuse,
        Assign,
        Result,
        Heartbeat,
        Shutdown,
        Goodbye,
        StatusRequest,
        StatusReply,
        Cancel,
        Revoke,
        Revoked,
    }
    assert len(MessageType) == 14


@pytest.mark.parametrize("message", EVERY_MESSAGE, ids=lambda m: type(m).__name__)
def test_decode_of_encode_is_identity(message: Message) -> None:
    assert decode(encode(message)) == message


def test_other_version_is_refused_with_the_version_named() -> None:
    with pytest.raises(ProtocolVersionError, match="protocol version 9") as info:
        decode(encode(Hello(pid=1, host="h", slots=1), version=9))
    assert info.value.version == 9


def test_refuse_of_another_version_is_still_readable() -> None:
    assert decode(encode(Refuse(reason="go away"), version=99)) == Refuse(reason="go away")


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\xc1",  # never-used msgpack byte
        msgpack.packb({"op": "ready"}),
        msgpack.packb([PROTOCOL_VERSION]),
        msgpack.packb([PROTOCOL_VERSION, 99]),
        msgpack.packb([PROTOCOL_VERSION, int(MessageType.HELLO), 1, "h"]),
        msgpack.packb([PROTOCOL_VERSION, int(MessageType.HELLO), "1", "h", 1]),
        msgpack.packb([PROTOCOL_VERSION, int(MessageType.HELLO), True, "h", 1]),
        msgpack.packb([PROTOCOL_VERSION, int(MessageType.ASSIGN), {"id": 3}, 1, None]),
        msgpack.packb([PROTOCOL_VERSION, int(MessageType.RESULT)] + [None] * 12),
        msgpack.packb([PROTOCOL_VERSION, int(MessageType.HEARTBEAT), msgpack.ExtType(1, b"x")]),
        encode(Hello(pid=1, host="h", slots=1))[:-1],
    ],
)
def test_malformed_frames_raise_protocol_error(frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(frame)


def test_oversized_frame_is_rejected_before_decoding() -> None:
    with pytest.raises(ProtocolError, match="exceeds"):
        decode(b"\x00" * (MAX_FRAME_BYTES + 1))


def test_random_bytes_never_escape_as_another_exception() -> None:
    rng = random.Random(1234)
    valid = [encode(m) for m in EVERY_MESSAGE]
    for _ in range(3000):
        if rng.random() < 0.5:
            frame = rng.randbytes(rng.randrange(0, 300))
        else:
            base = bytearray(rng.choice(valid))
            for _ in range(rng.randrange(1, 4)):
                base[rng.randrange(len(base))] = rng.randrange(256)
            frame = bytes(base[: rng.randrange(1, len(base) + 1)])
        try:
            decode(frame)
        except ProtocolError:
            pass
