"""The codec: every message round-trips; anything malformed raises ProtocolError."""

from __future__ import annotations

import math
import random

import msgpack
import pytest

from common import codec
from common.codec import MAX_FRAME_BYTES, Peek, decode, encode, peek
from common.errors import ProtocolError, ProtocolVersionError
from common.graph import QuantumGraph
from common.protocol import (
    PROTOCOL_VERSION,
    Assign,
    Cancel,
    ExecutorExited,
    Goodbye,
    Heartbeat,
    Hello,
    Message,
    MessageType,
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
from tests.wire import EVERY_MESSAGE, Q, frame_with, wrong_type_frames


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
        ExecutorExited,
        Preempt,
    }
    assert len(MessageType) == 16


@pytest.mark.parametrize("message", EVERY_MESSAGE, ids=lambda m: type(m).__name__)
def test_decode_of_encode_is_identity(message: Message) -> None:
    assert decode(encode(message)) == message


@pytest.mark.parametrize("message", EVERY_MESSAGE, ids=lambda m: type(m).__name__)
def test_a_well_formed_frame_is_decoded_without_the_checked_path(
    message: Message, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fast path takes every well-formed frame (the checked one is there to name what is
    wrong: a frame it had to read would cost a broker ~4x per quantum)."""

    def checked_path(data: bytes) -> None:
        raise AssertionError("the checked path was taken")

    monkeypatch.setattr(codec, "_unpack", checked_path)
    assert decode(encode(message)) == message


_QUANTUM_VARIANTS: list[tuple[str, object]] = [
    ("id", ""),
    ("id", 5),
    ("task", "no-colon"),
    ("task", ""),
    ("task_label", ""),
    ("task_label", None),
    ("data_id", {"visit": True}),
    ("data_id", {"visit": 1.5}),
    ("data_id", {"visit": None}),
    ("data_id", {1: 2}),
    ("data_id", []),
    ("inputs", ["raw-1", "flat-1"]),
    ("inputs", {"raw": ""}),
    ("inputs", {"": "raw-1"}),
    ("inputs", {"raw": 3}),
    ("outputs", "out"),
    ("outputs", {"out": None}),
    ("config", {1: "a"}),
    ("config", None),
    ("timeout", 0),
    ("timeout", -1.0),
    ("timeout", True),
    ("timeout", "3"),
    ("timeout", math.inf),
    ("timeout", math.nan),
    ("timeout", None),
    ("timeout", 2),
]


@pytest.mark.parametrize(
    ("key", "value"), [*_QUANTUM_VARIANTS, ("extra field", 1), ("missing field", None)]
)
def test_the_fast_path_never_accepts_a_quantum_the_checked_one_refuses(
    key: str, value: object
) -> None:
    """The fast path states the quantum's rules a second time (in msgspec, for speed): what it
    accepts must be what ``Quantum.from_dict`` accepts, and decode to the same quantum."""
    fields = codec._wire_quantum(Q)
    if key == "extra field":
        fields.append(value)
    elif key == "missing field":
        fields.pop()
    else:
        fields[codec._QUANTUM_FIELDS.index(key)] = value
    frame = frame_with(Assign(Q, 1, None, 1, 0), quantum=fields)
    fast = codec._fast_decode(frame)
    try:
        checked = codec._checked_quantum(fields)
    except (TypeError, ValueError):
        assert fast is None
        with pytest.raises(ProtocolError):
            decode(frame)
        return
    # (None: a form only graph files use, such as inputs as a list)
    assert fast is None or fast == Assign(checked, 1, None, 1, 0)
    assert decode(frame) == Assign(checked, 1, None, 1, 0)


def test_assign_frames_spliced_from_a_graph_are_the_encoded_assigns() -> None:
    quanta = [
        Q,
        Quantum("b", "calib", "pkg.mod:calib", {}, {"raw": "raw-1"}, {}, {}, None),
        Quantum(
            "détecteur/1 ☃", "t", "m:f", {"v": "x" * 300}, {}, {"o": "d"}, {"n": [1, {"k": None}]}
        ),
        Quantum(
            "c" * 40, "isr", "pkg.mod:isr", {"visit": 2**40}, {}, {}, {"big": "y" * 70000}, 0.5
        ),
    ]
    graph = QuantumGraph.from_quanta(quanta, [("isr-1", "b")])
    frames = codec.AssignFrames(graph)
    for i, q in enumerate(graph.quanta()):
        for attempt, timeout_s, seq, after in ((1, None, 1, 0), (3, 2.5, 2**40, 7)):
            frame = frames.frame(i, attempt, timeout_s, seq, after)
            assert frame == encode(Assign(q, attempt, timeout_s, seq, after))
            assert decode(frame) == Assign(q, attempt, timeout_s, seq, after)


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


def test_a_frame_nested_too_deep_is_a_protocol_error() -> None:
    status_reply = bytes([0x93, PROTOCOL_VERSION, MessageType.STATUS_REPLY, 0x81, 0xA1]) + b"a"
    with pytest.raises(ProtocolError):
        decode(status_reply + b"\x91" * 200_000 + b"\xc0")


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


RESULT = next(m for m in EVERY_MESSAGE if isinstance(m, Result) and m.reason is Reason.SIGNAL)


@pytest.mark.parametrize("reason", ["no-such-reason", "", 7, True])
def test_result_with_a_reason_outside_the_enum_is_a_protocol_error(reason: object) -> None:
    with pytest.raises(ProtocolError, match=r"Result\.reason"):
        decode(frame_with(RESULT, reason=reason))


def test_result_status_and_reason_decode_into_their_enums() -> None:
    decoded = decode(encode(RESULT))
    assert isinstance(decoded, Result)
    assert type(decoded.status) is ResultStatus and type(decoded.reason) is Reason
    with pytest.raises(ProtocolError, match=r"Result\.status"):
        decode(frame_with(RESULT, status="partly"))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("duration_s", math.nan),
        ("duration_s", math.inf),
        ("duration_s", -1.0),
        ("duration_s", 1e300),
        ("attempt", 0),
        ("attempt", -3),
        ("attempt", 2**63 - 1),
        ("start_time", -5.0),
        ("max_rss_kb", -1),
        ("exit_code", 2**40),
    ],
)
def test_result_numbers_outside_their_bounds_are_protocol_errors(field: str, value: object) -> None:
    with pytest.raises(ProtocolError, match=rf"Result\.{field}"):
        decode(frame_with(RESULT, **{field: value}))


@pytest.mark.parametrize(
    ("message", "field", "value"),
    [
        (Hello(pid=1, host="h", slots=1), "slots", 10**9),
        (Hello(pid=1, host="h", slots=1), "slots", 0),
        (Hello(pid=1, host="h", slots=1), "pid", -1),
        (Shutdown(reason="x", grace_s=1.0), "grace_s", math.nan),
        (Revoke("q", 1, 1), "attempt", 0),
        (Revoke("q", 1, 1), "seq", -1),
    ],
)
def test_other_numbers_outside_their_bounds_are_protocol_errors(
    message: Message, field: str, value: object
) -> None:
    with pytest.raises(ProtocolError, match=field):
        decode(frame_with(message, **{field: value}))


@pytest.mark.parametrize("message", EVERY_MESSAGE, ids=lambda m: type(m).__name__)
def test_every_field_of_every_message_rejects_wrong_types(message: Message) -> None:
    for name, frame in wrong_type_frames(message):
        with pytest.raises(ProtocolError, match=name):
            decode(frame)


def test_peek_reads_routing_fields_from_the_dataclass_layout() -> None:
    assign = Assign(quantum=Q, attempt=3, timeout_s=2.5, seq=4)
    got = peek(encode(assign))
    assert got == Peek(MessageType.ASSIGN, Q.id, 3, 2.5)
    assert peek(encode(RESULT)) == Peek(MessageType.RESULT, RESULT.quantum_id, RESULT.attempt, None)
    assert peek(encode(Heartbeat())) is None
    with pytest.raises(ProtocolError):
        peek(frame_with(assign, attempt="3"))
