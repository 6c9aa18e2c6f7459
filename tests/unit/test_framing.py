"""Length-prefixed frames on a byte stream (executor links)."""

from __future__ import annotations

import pytest

from common.codec import MAX_FRAME_BYTES
from common.errors import ProtocolError
from common.framing import HEADER, split_frames


def framed(*frames: bytes) -> bytes:
    return b"".join(HEADER.pack(len(f)) + f for f in frames)


def test_complete_frames_are_taken_and_a_partial_one_waits_for_the_rest() -> None:
    stream = framed(b"one", b"", b"three") + framed(b"four")[:-2]
    buf = bytearray(stream)
    assert split_frames(buf) == [b"one", b"", b"three"]
    assert buf == bytearray(framed(b"four")[:-2])  # kept for the next read
    buf += b"ur"
    assert split_frames(buf) == [b"four"] and buf == bytearray()


def test_a_stream_cut_anywhere_yields_the_same_frames() -> None:
    frames = [bytes([i]) * i for i in range(1, 40)]
    stream = framed(*frames)
    for step in (1, 3, 7, 64):
        buf, got = bytearray(), []
        for i in range(0, len(stream), step):
            buf += stream[i : i + step]
            got += split_frames(buf)
        assert got == frames


def test_a_length_beyond_the_frame_limit_is_a_framing_error() -> None:
    buf = bytearray(HEADER.pack(MAX_FRAME_BYTES + 1) + b"x")
    with pytest.raises(ProtocolError, match="announced"):
        split_frames(buf)
