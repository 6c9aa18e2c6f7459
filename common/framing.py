"""Length-prefixed frames on a byte stream (an executor child's link to a broker on the same
host): a 4-byte little-endian length, then the frame; lengths are capped like ZeroMQ frames."""

from __future__ import annotations

import struct
from typing import Final

from common.codec import MAX_FRAME_BYTES

__all__ = ["HEADER", "FramingError", "split_frames"]

HEADER: Final = struct.Struct("<I")


class FramingError(Exception):
    """The stream announced a frame longer than ``MAX_FRAME_BYTES``: it is not ours."""


def split_frames(buf: bytearray) -> list[bytes]:
    """The complete frames at the start of ``buf``, removed from it."""
    frames, pos, end = [], 0, len(buf)
    while end - pos >= HEADER.size:
        (n,) = HEADER.unpack_from(buf, pos)
        if n > MAX_FRAME_BYTES:
            raise FramingError(f"a frame of {n} bytes announced (limit {MAX_FRAME_BYTES})")
        if end - pos - HEADER.size < n:
            break
        start = pos + HEADER.size
        frames.append(bytes(buf[start : start + n]))
        pos = start + n
    del buf[:pos]
    return frames
