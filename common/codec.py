"""The wire codec: protocol messages to and from msgpack frames. The only msgpack user.

A frame is ``[version, type, *fields]``, the fields in dataclass order. Each message's decoder
is derived from its dataclass's type hints (one definition, nothing restated here): closed sets
decode into their enums, numbers are checked against their ``Bounds`` and must be finite, and
anything malformed raises one error type (``ProtocolError``).

Two derivations of the same hints: a msgspec decoder per type checks a well-formed frame in C
(a RESULT in ~1 us, not ~5: a broker decodes one per quantum); a frame it rejects goes through
the checked path, which names what is wrong.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import operator
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Final, TypeAlias

import msgpack
import msgspec

from common.errors import ProtocolError, ProtocolVersionError
from common.protocol import (
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    Assign,
    Bounds,
    Message,
    MessageType,
    Result,
)
from common.quantum import Quantum

if TYPE_CHECKING:
    from common.graph import QuantumGraph

__all__ = ["MAX_FRAME_BYTES", "AssignFrames", "Peek", "decode", "encode", "peek"]

MAX_FRAME_BYTES: Final = 64 * 1024 * 1024
_MAX_STR: Final = 16 * 1024 * 1024
_MAX_ITEMS: Final = 1_000_000

_TYPE_OF: Final = MESSAGE_TYPES
_CLASS_OF: Final = {t: cls for cls, t in _TYPE_OF.items()}

Decoder = Callable[[Any], Any]


# ---------------------------------------------------------------------- the wire quantum
_NonEmpty: TypeAlias = Annotated[str, msgspec.Meta(min_length=1)]


class _WireQuantum(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """A quantum on the wire: an array of these fields (the four in the middle are a graph's
    stored payload, ``AssignFrames`` splices them in as they are). The fast path holds it in C
    to the rules of ``checked_fields``, never looser (tests/unit/test_codec compares the two);
    anything else goes through ``Quantum.from_dict``, which names what is wrong."""

    id: _NonEmpty
    task_label: _NonEmpty
    task: Annotated[str, msgspec.Meta(pattern=":")]
    data_id: dict[str, int | str]
    inputs: dict[_NonEmpty, _NonEmpty]
    outputs: dict[_NonEmpty, _NonEmpty]
    config: dict[str, Any]
    timeout: Annotated[float, msgspec.Meta(gt=0)] | None


_QUANTUM_FIELDS: Final = _WireQuantum.__struct_fields__
_PAYLOAD_FIELDS: Final = ("data_id", "inputs", "outputs", "config")  # a graph's stored payload


def _quantum(w: _WireQuantum) -> Quantum:
    return Quantum.trusted(
        w.id, w.task_label, w.task, w.data_id, w.inputs, w.outputs, w.config, w.timeout
    )


def _checked_quantum(value: Any) -> Quantum:
    if not isinstance(value, list) or len(value) != len(_QUANTUM_FIELDS):
        raise TypeError(f"expected a quantum as an array of {len(_QUANTUM_FIELDS)} fields")
    raw = dict(zip(_QUANTUM_FIELDS, value, strict=True))
    if raw["timeout"] is None:
        del raw["timeout"]
    return Quantum.from_dict(raw)


def _wire_quantum(q: Quantum) -> list[Any]:
    return [
        q.id,
        q.task_label,
        q.task,
        *map(dict, (q.data_id, q.inputs, q.outputs, q.config)),
        q.timeout_s,
    ]


# ---------------------------------------------------------------------- derived decoders
def _exact(kind: type) -> Decoder:
    def check(value: Any) -> Any:
        # bool is an int subclass: never accept it where a number is meant (and vice versa).
        if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
        return value

    return check


def _float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"expected a finite number, got {out}")
    return out


def _bounded(inner: Decoder, bounds: Bounds) -> Decoder:
    def check(value: Any) -> Any:
        out = inner(value)
        if not bounds.lo <= out <= bounds.hi:
            raise ValueError(f"{out!r} is outside [{bounds.lo:g}, {bounds.hi:g}]")
        return out

    return check


def _enum(cls: type[enum.Enum]) -> Decoder:
    def check(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise TypeError(f"expected a {cls.__name__} value, got {type(value).__name__}")
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a {cls.__name__}") from None

    return check


def _list_of(item: Decoder) -> Decoder:
    def check(value: Any) -> list[Any]:
        if not isinstance(value, list):
            raise TypeError(f"expected a list, got {type(value).__name__}")
        return [item(v) for v in value]

    return check


def _str_dict(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise TypeError("expected a mapping with string keys")
    return value


def _optional(inner: Decoder) -> Decoder:
    return lambda value: None if value is None else inner(value)


def _decoder_for(hint: Any) -> Decoder:
    """The decoder for one field's type hint; TypeError (at import) for a type the wire lacks."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        bounds = [m for m in hint.__metadata__ if isinstance(m, Bounds)]
        inner = _decoder_for(args[0])
        return _bounded(inner, bounds[0]) if bounds else inner
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            return _optional(_decoder_for(rest[0]))
    elif origin is list:
        return _list_of(_decoder_for(args[0]))
    elif origin is dict and args[0] is str:
        return _str_dict
    elif hint is float:
        return _float
    elif hint in (int, str, bytes, bool):
        return _exact(hint)
    elif hint is Quantum:
        return _checked_quantum
    elif isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _enum(hint)
    raise TypeError(f"no wire decoder for {hint!r}")


def _decoders(cls: type[Any]) -> tuple[Decoder, ...]:
    hints = typing.get_type_hints(cls, include_extras=True)
    return tuple(_decoder_for(hints[f.name]) for f in dataclasses.fields(cls))


_FIELDS: Final = {cls: _decoders(cls) for cls in _TYPE_OF}
_NAMES: Final = {cls: tuple(f.name for f in dataclasses.fields(cls)) for cls in _TYPE_OF}
_STR: Final = _exact(str)


# ---------------------------------------------------------------------- the fast path
_FINITE: Final = msgspec.Meta(ge=-1.7976931348623157e308, le=1.7976931348623157e308)


def _fast_type(hint: Any) -> Any:
    """The msgspec type accepting what ``_decoder_for(hint)`` accepts, or less."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        bounds = [m for m in hint.__metadata__ if isinstance(m, Bounds)]
        if not bounds:
            return _fast_type(args[0])
        return Annotated[args[0], msgspec.Meta(ge=bounds[0].lo, le=bounds[0].hi)]  # finite too
    if origin in (typing.Union, types.UnionType):
        (rest,) = [a for a in args if a is not type(None)]
        return _fast_type(rest) | None
    if origin is list:
        return list[_fast_type(args[0])]  # type: ignore[misc]
    if origin is dict:
        return dict[str, Any]
    if hint is float:
        return Annotated[float, _FINITE]
    if hint is Quantum:
        return _WireQuantum
    return hint  # int, str, bytes, bool, an enum: msgspec checks them as the checked path does


def _fast_decoder(cls: type[Any]) -> msgspec.msgpack.Decoder[Any]:
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = tuple(_fast_type(hints[f.name]) for f in dataclasses.fields(cls))
    frame: Any = tuple.__class_getitem__((int, int, *fields))  # [version, type, *fields]
    return msgspec.msgpack.Decoder(frame)


_FAST: Final = {int(t): (cls, _fast_decoder(cls)) for cls, t in _TYPE_OF.items()}
_GET: Final = {cls: operator.attrgetter(*_NAMES[cls]) for cls in _TYPE_OF if _NAMES[cls]}
_ENCODER: Final = msgspec.msgpack.Encoder()


def _fast_decode(data: bytes) -> Message | None:
    """The message of a well-formed frame of this version; None where the checked path must
    look (anything else, or a problem to name)."""
    # [version, type, ...]: a fixarray byte (up to 15 items) or an array16 header (0xdc and
    # two length bytes), then two fixints
    head = 3 if data[:1] == b"\xdc" else 1 if data[:1] and data[0] & 0xF0 == 0x90 else 0
    if not head or len(data) < head + 2 or data[head] != PROTOCOL_VERSION:
        return None
    fast = _FAST.get(data[head + 1])
    if fast is None:
        return None
    cls, decoder = fast
    try:
        fields = decoder.decode(data)[2:]
        if cls is Assign:
            fields = (_quantum(fields[0]), *fields[1:])
    except (msgspec.MsgspecError, ValueError, RecursionError):  # (nesting too deep)
        return None
    message: Message = cls(*fields)
    return message


def _index(cls: type[Any], name: str) -> int:
    """Where field ``name`` of ``cls`` sits in a frame (after version and type)."""
    return 2 + _NAMES[cls].index(name)


# ---------------------------------------------------------------------- encode / decode
def encode(message: Message, version: int = PROTOCOL_VERSION) -> bytes:
    """One frame for ``message`` (``version`` is overridable only to test refusal)."""
    cls = type(message)
    get = _GET.get(cls)
    if get is None:
        fields: tuple[Any, ...] = ()
    elif len(_NAMES[cls]) == 1:
        fields = (get(message),)
    else:
        fields = get(message)
    if cls is Assign:
        fields = (_wire_quantum(fields[0]), *fields[1:])
    return _ENCODER.encode((version, int(_TYPE_OF[cls]), *fields))


# An ASSIGN frame up to its quantum's first field: [version, ASSIGN, [id, ...
_ASSIGN_HEAD: Final = bytes(
    (
        0x90 | 2 + len(_NAMES[Assign]),
        PROTOCOL_VERSION,
        MessageType.ASSIGN,
        0x90 | len(_QUANTUM_FIELDS),
    )
)
if (
    _NAMES[Assign] != ("quantum", "attempt", "timeout_s", "seq", "after", "memory_mb", "cpus")
    or ("id", "task_label", "task", *_PAYLOAD_FIELDS, "timeout") != _QUANTUM_FIELDS
):
    raise TypeError(
        "AssignFrames splices an ASSIGN laid out as [quantum, attempt, timeout_s, seq, after, "
        "memory_mb, cpus] "
        "and a quantum as [id, task_label, task, payload..., timeout]"
    )


class AssignFrames:
    """ASSIGN frames for the quanta of ``graph`` with the stored payload spliced in: what
    ``encode(Assign(graph.quantum_at(i), ...))`` gives, without building the quantum and
    encoding it again (a broker sends one per quantum: that cost ~5 us, ~100 with cold caches;
    this ~1 and ~30)."""

    def __init__(self, graph: QuantumGraph) -> None:
        self._graph = graph
        self._kinds = [_ENCODER.encode(kind)[1:] for kind in graph.kinds]  # label, task

    def frame(
        self,
        i: int,
        attempt: int,
        timeout_s: float | None,
        seq: int,
        after: int = 0,
        memory_mb: float | None = None,
        cpus: int | None = None,
    ) -> bytes:
        g = self._graph
        # the quantum's timeout, then the ASSIGN's own fields after the quantum
        own = (attempt, timeout_s, seq, after, memory_mb, cpus)
        tail = _ENCODER.encode((g.timeouts.get(i), *own))
        payload = g.payloads.raw(i)  # [data_id, inputs, outputs, config]: a 1-byte header
        parts = (
            _ASSIGN_HEAD,
            _ENCODER.encode(g.ids[i]),
            self._kinds[g.kind[i]],
            payload[1:],
            tail[1:],
        )
        return b"".join(parts)


@dataclass(frozen=True, slots=True)
class Peek:
    """What a relay needs from an ASSIGN or RESULT frame without building the message."""

    kind: MessageType
    quantum_id: str
    attempt: int
    timeout_s: float | None


_ASSIGN_LEN: Final = 2 + len(_FIELDS[Assign])
_RESULT_LEN: Final = 2 + len(_FIELDS[Result])
_A_QUANTUM, _A_ATTEMPT, _A_TIMEOUT = (
    _index(Assign, n) for n in ("quantum", "attempt", "timeout_s")
)
_R_ID, _R_ATTEMPT = _index(Result, "quantum_id"), _index(Result, "attempt")
_ATTEMPT: Final = _FIELDS[Assign][_A_ATTEMPT - 2]
_TIMEOUT: Final = _FIELDS[Assign][_A_TIMEOUT - 2]
_RESULT_ID: Final = _FIELDS[Result][_R_ID - 2]


def peek(data: bytes) -> Peek | None:
    """The routing fields of an ASSIGN or RESULT frame; None for other (valid) types.

    The agent relays these frames verbatim; the side that acts on them decodes them fully.
    """
    raw = _unpack(data)
    kind = raw[1]
    try:
        if kind == MessageType.ASSIGN and len(raw) == _ASSIGN_LEN:
            quantum = raw[_A_QUANTUM]
            qid = quantum[0] if isinstance(quantum, list) and quantum else None
            return Peek(
                MessageType.ASSIGN, _STR(qid), _ATTEMPT(raw[_A_ATTEMPT]), _TIMEOUT(raw[_A_TIMEOUT])
            )
        if kind == MessageType.RESULT and len(raw) == _RESULT_LEN:
            return Peek(MessageType.RESULT, _RESULT_ID(raw[_R_ID]), _ATTEMPT(raw[_R_ATTEMPT]), None)
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
    if isinstance(kind, bool) or not isinstance(kind, int) or kind not in _CLASS_OF:
        raise ProtocolError(f"unknown message type {kind!r}", data)
    return raw


def decode(data: bytes) -> Message:
    """The message in ``data``; ProtocolError (or ProtocolVersionError) if it is not one."""
    if len(data) <= MAX_FRAME_BYTES and (fast := _fast_decode(data)) is not None:
        return fast
    raw = _unpack(data)
    cls, fields = _CLASS_OF[MessageType(raw[1])], raw[2:]
    decoders = _FIELDS[cls]
    if len(fields) != len(decoders):
        raise ProtocolError(
            f"{cls.__name__} needs {len(decoders)} fields, frame has {len(fields)}", data
        )
    values = []
    for name, dec, value in zip(_NAMES[cls], decoders, fields, strict=True):
        try:
            values.append(dec(value))
        except (TypeError, ValueError) as e:
            raise ProtocolError(f"bad {cls.__name__}.{name}: {e}", data) from e
    message: Message = cls(*values)
    return message
