"""The wire codec: protocol messages to and from msgpack frames. The only msgpack user.

A frame is ``[version, type, *fields]``. Decoding checks size limits, the version, the type and
every field's type, and raises one error type (``ProtocolError``) for anything malformed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import msgpack

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

__all__ = ["MAX_FRAME_BYTES", "Peek", "decode", "encode", "peek"]

MAX_FRAME_BYTES: Final = 64 * 1024 * 1024
_MAX_STR: Final = 16 * 1024 * 1024
_MAX_ITEMS: Final = 1_000_000

_TYPE_OF: Final[dict[type[Any], MessageType]] = {
    Hello: MessageType.HELLO,
    Welcome: MessageType.WELCOME,
    Refuse: MessageType.REFUSE,
    Assign: MessageType.ASSIGN,
    Result: MessageType.RESULT,
    Heartbeat: MessageType.HEARTBEAT,
    Shutdown: MessageType.SHUTDOWN,
    Goodbye: MessageType.GOODBYE,
    Ready: MessageType.READY,
    StatusRequest: MessageType.STATUS_REQUEST,
    StatusReply: MessageType.STATUS_REPLY,
    Cancel: MessageType.CANCEL,
    Revoke: MessageType.REVOKE,
    Revoked: MessageType.REVOKED,
}
_CLASS_OF: Final = {t: cls for cls, t in _TYPE_OF.items()}


def _check(kind: type | tuple[type, ...], optional: bool = False) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value is None and optional:
            return None
        # bool is an int subclass; never accept it where a number is meant.
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise TypeError(f"expected {kind}, got bool")
        if not isinstance(value, kind):
            raise TypeError(f"expected {kind}, got {type(value).__name__}")
        return value

    return check


def _number(optional: bool = False) -> Callable[[Any], Any]:
    check = _check((int, float), optional)
    return lambda v: None if v is None else float(check(v))


def _strings(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError("expected a list of strings")
    return value


def _quantum(value: Any) -> Quantum:
    return Quantum.from_dict(value)


_STR, _INT = _check(str), _check(int)
_OPT_STR, _OPT_INT = _check(str, True), _check(int, True)

# Field decoders in dataclass field order, one tuple per message class.
_FIELDS: Final[dict[type[Any], tuple[Callable[[Any], Any], ...]]] = {
    Hello: (_INT, _STR, _INT),
    Welcome: (_STR, _number(), _INT, _check(bytes), _STR, _strings, _OPT_INT, _OPT_INT),
    Ready: (),
    StatusRequest: (),
    StatusReply: (_check(dict),),
    Cancel: (_check(bool),),
    Revoke: (_STR, _INT),
    Revoked: (_STR, _INT),
    Refuse: (_STR,),
    Assign: (_quantum, _INT, _number(optional=True)),
    Result: (
        _STR,
        _INT,
        ResultStatus,
        _OPT_INT,
        _OPT_STR,
        _OPT_STR,
        _OPT_STR,
        _number(),
        _number(),
        _number(),
        _OPT_INT,
        _OPT_STR,
        _check(bool),
    ),
    Heartbeat: (),
    Shutdown: (_STR, _number()),
    Goodbye: (_STR,),
}


def _plain(value: Any) -> Any:
    if isinstance(value, Quantum):
        return value.to_dict()
    return value


def encode(message: Message, version: int = PROTOCOL_VERSION) -> bytes:
    """One frame for ``message`` (``version`` is overridable only to test refusal)."""
    fields = [_plain(getattr(message, f.name)) for f in dataclasses.fields(message)]
    data: bytes = msgpack.packb([version, int(_TYPE_OF[type(message)]), *fields], use_bin_type=True)
    return data


@dataclass(frozen=True, slots=True)
class Peek:
    """What a relay needs from an ASSIGN or RESULT frame without building the message."""

    kind: MessageType
    quantum_id: str
    attempt: int
    timeout_s: float | None


def peek(data: bytes) -> Peek | None:
    """The routing fields of an ASSIGN or RESULT frame; None for other (valid) types.

    The agent relays these frames verbatim; the side that acts on them decodes them fully.
    """
    raw = _unpack(data)
    kind = raw[1]
    try:
        if kind == MessageType.ASSIGN and len(raw) == 5:
            qid = raw[2]["id"] if isinstance(raw[2], dict) else None
            return Peek(MessageType.ASSIGN, _STR(qid), _INT(raw[3]), _number(True)(raw[4]))
        if kind == MessageType.RESULT and len(raw) == 15:
            return Peek(MessageType.RESULT, _STR(raw[2]), _INT(raw[3]), None)
    except (TypeError, ValueError) as e:
        raise ProtocolError(f"bad {MessageType(kind).name} routing field: {e}", data) from e
    return None


def _unpack(data: bytes) -> list[Any]:
    """The checked ``[version, type, *fields]`` array of a frame."""
    if len(data) > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {len(data)} bytes exceeds {MAX_FRAME_BYTES}", data)
    try:
        raw = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=_MAX_STR,
            max_bin_len=MAX_FRAME_BYTES,
            max_array_len=_MAX_ITEMS,
            max_map_len=_MAX_ITEMS,
            max_ext_len=0,
        )
    except Exception as e:  # msgpack raises several unrelated types for bad input
        raise ProtocolError(f"undecodable frame: {type(e).__name__}: {e}", data) from e
    if not isinstance(raw, list) or len(raw) < 2:
        raise ProtocolError("frame is not a [version, type, ...] array", data)
    version, kind = raw[0], raw[1]
    if version != PROTOCOL_VERSION and not (kind == MessageType.REFUSE and len(raw) == 3):
        # REFUSE keeps one layout in every version, so a refused peer can read why.
        raise ProtocolVersionError(
            f"protocol version {version!r} is not supported (this side speaks {PROTOCOL_VERSION})",
            version,
            data,
        )
    try:
        MessageType(kind)
    except (ValueError, TypeError) as e:
        raise ProtocolError(f"unknown message type {kind!r}", data) from e
    return raw


def decode(data: bytes) -> Message:
    """The message in ``data``; ProtocolError (or ProtocolVersionError) if it is not one."""
    raw = _unpack(data)
    cls, fields = _CLASS_OF[MessageType(raw[1])], raw[2:]
    decoders = _FIELDS[cls]
    if len(fields) != len(decoders):
        raise ProtocolError(
            f"{cls.__name__} needs {len(decoders)} fields, frame has {len(fields)}", data
        )
    try:
        values = [dec(v) for dec, v in zip(decoders, fields, strict=True)]
    except (TypeError, ValueError) as e:
        raise ProtocolError(f"bad {cls.__name__} field: {e}", data) from e
    message: Message = cls(*values)
    return message
