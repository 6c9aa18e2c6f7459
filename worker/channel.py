"""An executor child's way to its broker: a link (a Unix socket on the broker's host, framed
like ``common.framing``) or, for a worker attached from elsewhere, a DEALER socket of its own.
Blocking: the child has nothing else to do while it waits for work."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Protocol

import zmq

from common.framing import HEADER, RECV_CHUNK, split_frames
from worker.dealer import connect_dealer

__all__ = ["Channel", "DealerChannel", "LinkChannel", "open_channel"]

_FLUSH_S = 5.0  # a child that leaves on its own waits this long at most for its last frame


class Channel(Protocol):
    def send(self, frame: bytes) -> None: ...

    def recv(self) -> bytes:
        """The next frame; EOFError once the broker is gone."""
        ...

    def close(self) -> None: ...


class LinkChannel:
    def __init__(self, path: str) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(path)
        self._buf = bytearray()
        self._frames: list[bytes] = []

    def send(self, frame: bytes) -> None:
        self._sock.sendall(HEADER.pack(len(frame)) + frame)

    def recv(self) -> bytes:
        while not self._frames:
            chunk = self._sock.recv(RECV_CHUNK)
            if not chunk:
                raise EOFError("the broker closed the link")
            self._buf += chunk
            self._frames = split_frames(self._buf)
        return self._frames.pop(0)

    def close(self) -> None:
        self._sock.close()  # what was sent is in the broker's socket buffer already


class DealerChannel:
    def __init__(self, endpoint: str, keys_dir: Path | None) -> None:
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._sock = connect_dealer(self._ctx, endpoint, keys_dir)

    def send(self, frame: bytes) -> None:
        self._sock.send(frame)

    def recv(self) -> bytes:
        return self._sock.recv()

    def close(self) -> None:
        self._sock.close(linger=int(_FLUSH_S * 1000))  # the last RESULT leaves before we do
        self._ctx.term()


def open_channel(link: str | None, endpoint: str, keys_dir: Path | None) -> Channel:
    return LinkChannel(link) if link is not None else DealerChannel(endpoint, keys_dir)
