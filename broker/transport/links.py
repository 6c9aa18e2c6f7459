"""Links to the executor children of local workers: a Unix stream socket in a private (0700)
directory, length-prefixed frames, never blocking the broker. A message between broker and
child wakes one thread on each side; over ZeroMQ it also passes an I/O thread on each side.

``LinkHub.service(events)`` accepts new links, reads what arrived, writes what waited; a link
whose peer is gone (or broke framing) is closed and reported once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path

from broker.core.droplog import DropLog
from broker.transport.poller import POLLERR, POLLIN, POLLOUT, Poller, Waitable
from common.errors import ProtocolError
from common.framing import HEADER, RECV_CHUNK, split_frames

__all__ = ["Link", "LinkHub", "link_path_for"]

logger = logging.getLogger(__name__)

# Plain ints: the poller's flags come back as ints, and IntFlag arithmetic costs a microsecond.
_IN, _OUT, _ERR = int(POLLIN), int(POLLOUT), int(POLLERR)


class Link:
    """One child's connection. Frames are queued (``queue``) and written together
    (``flush``), never blocking: what the socket does not take waits until it is writable."""

    def __init__(self, sock: socket.socket, drops: DropLog) -> None:
        sock.setblocking(False)
        self._drops = drops
        self.sock = sock
        self.fd = sock.fileno()
        self._in = bytearray()
        self._out = bytearray()
        self.closed = False

    def __repr__(self) -> str:
        return f"<link fd {self.fd}>"

    @property
    def wants_write(self) -> bool:
        return bool(self._out)

    def read(self) -> tuple[list[bytes], bool]:
        """The frames complete now, and whether the peer is still there (its last frames
        come before the False)."""
        alive = True
        while True:
            try:
                chunk = self.sock.recv(RECV_CHUNK)
            except BlockingIOError:
                break
            except OSError:
                alive = False
                break
            if not chunk:
                alive = False
                break
            self._in += chunk
            if len(chunk) < RECV_CHUNK:
                break  # drained; an end of stream shows as readable again
        try:
            frames = split_frames(self._in)
        except ProtocolError as e:
            self._drops.warn("closing %r: %s", self, e)
            return [], False
        return frames, alive

    def queue(self, frame: bytes) -> bool:
        """Queue ``frame``; False once the link is closed."""
        if self.closed:
            return False
        self._out += HEADER.pack(len(frame))
        self._out += frame
        return True

    def flush(self) -> bool:
        """Write what is queued (as much as the socket takes); False if the peer is gone."""
        if not self._out:
            return True
        try:
            sent = self.sock.send(self._out)
        except BlockingIOError:
            return True
        except OSError:
            return False
        del self._out[:sent]
        return True

    def close(self) -> None:
        self.closed = True
        self._out.clear()
        self.sock.close()


_PATH_LIMIT = 107  # bytes in sun_path


def link_path_for(endpoint: str) -> Path | None:
    """Beside an ipc endpoint's socket (in its directory, private to the run), if the name
    fits; None for other endpoints."""
    if not endpoint.startswith("ipc://"):
        return None
    path = Path(endpoint.removeprefix("ipc://") + ".exec")
    return path if len(str(path).encode()) <= _PATH_LIMIT else None


class LinkHub:
    """The listening socket and its links, registered in the broker's poller. It listens at
    ``path`` if given, else in a private directory of its own; what links drop is logged
    through ``drops`` (rate-limited per kind)."""

    def __init__(self, path: Path | None = None, drops: DropLog | None = None) -> None:
        self._drops = drops if drops is not None else DropLog(logger)
        self._dir: Path | None = None
        if path is None:
            self._dir = Path(tempfile.mkdtemp(prefix="zl", dir="/tmp"))  # mode 0700
            path = self._dir / "exec.sock"
        self.path = str(path)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # left by a broker that was killed
        self._listener.bind(self.path)
        self._listener.listen(128)
        self._listener.setblocking(False)
        self._links: dict[int, Link] = {}
        self._poller: Poller | None = None
        self._writing: set[int] = set()
        self._queued: dict[int, Link] = {}

    def attach(self, poller: Poller) -> None:
        self._poller = poller
        poller.register(self._listener.fileno(), POLLIN)

    def service(self, events: dict[Waitable, int]) -> list[tuple[Link, list[bytes], bool]]:
        """(link, frames that arrived, still open) for each link with news; links whose
        peer is gone are closed (and reported once)."""
        if self._listener.fileno() in events:
            self._accept()
        out = []
        for fd, flags in events.items():
            link = self._links.get(fd) if isinstance(fd, int) else None
            if link is None:
                continue
            alive = True
            if flags & _OUT:
                alive = link.flush()
            frames: list[bytes] = []
            if flags & (_IN | _ERR) or not alive:
                frames, open_ = link.read()
                alive = alive and open_
            if not alive:
                self.drop(link)
            out.append((link, frames, alive))
        if self._writing:
            self._update_writes()
        return out

    def send(self, link: Link, frame: bytes) -> bool:
        """Queue ``frame`` for ``link`` until ``flush``; False if the link is closed."""
        if not link.queue(frame):
            return False
        self._queued[link.fd] = link
        return True

    def flush(self) -> None:
        """Write what was queued since the last flush: one write per link, however many
        frames. A link whose peer is gone shows as readable (end of stream) at the next poll."""
        for link in self._queued.values():
            if link.flush() and link.wants_write and link.fd not in self._writing:
                self._set_writing(link, True)
        self._queued.clear()

    def close(self) -> None:
        for link in list(self._links.values()):
            self.drop(link)
        if self._poller is not None:
            self._poller.unregister(self._listener.fileno())
        self._listener.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # out of file descriptors: the child retries or dies
                logger.error("cannot accept an executor link: %s", e)
                return
            link = Link(sock, self._drops)
            self._links[link.fd] = link
            if self._poller is not None:
                self._poller.register(link.fd, POLLIN)

    def drop(self, link: Link) -> None:
        self._links.pop(link.fd, None)
        self._queued.pop(link.fd, None)
        self._writing.discard(link.fd)
        if self._poller is not None:
            self._poller.unregister(link.fd)
        link.close()

    def _set_writing(self, link: Link, on: bool) -> None:
        if self._poller is not None:
            self._poller.modify(link.fd, POLLIN | (POLLOUT if on else 0))
        (self._writing.add if on else self._writing.discard)(link.fd)

    def _update_writes(self) -> None:
        for fd in list(self._writing):
            link = self._links.get(fd)
            if link is not None and not link.wants_write:
                self._set_writing(link, False)
