"""What the broker loop waits on: file descriptors (executor links, pidfds, the wake pipe)
through epoll, and ZeroMQ sockets through the descriptor each one signals on. One system call
per wake-up where ``zmq.Poller`` makes six (each ~10-20 us with the cold caches a broker
meets after sleeping through a task). Knows nothing of what the descriptors are.
"""

from __future__ import annotations

import contextlib
import select
from collections.abc import Iterable
from typing import Final

import zmq

__all__ = ["POLLERR", "POLLIN", "POLLOUT", "Poller", "Ready", "Waitable"]

# epoll's flags have poll's (and ZeroMQ's) values
POLLIN: Final = select.EPOLLIN
POLLOUT: Final = select.EPOLLOUT
POLLERR: Final = select.EPOLLERR

Socket = zmq.Socket[bytes]
Waitable = int | Socket  # a file descriptor or a ZeroMQ socket
Ready = list[tuple[Waitable, int]]


class Poller:
    """``zmq.Poller``'s interface for the loop. A ZeroMQ socket's descriptor only says that
    its events may have changed, and a send or receive on it can take in that news without
    the descriptor saying so again: its ``ZMQ_EVENTS`` are read when the descriptor fires,
    after ``used`` (it was sent on or read from), and on a wake-up with no news at all."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._sockets: dict[int, Socket] = {}  # signalling descriptor -> socket
        self._flags: dict[Socket, int] = {}
        self._unread: set[Socket] = set()  # whose events must be read before waiting

    def register(self, target: Waitable, flags: int) -> None:
        if isinstance(target, zmq.Socket):
            fd = int(target.getsockopt(zmq.FD))
            self._sockets[fd] = target
            self._flags[target] = flags
            self._unread.add(target)
            self._epoll.register(fd, POLLIN)
        else:
            self._epoll.register(target, flags)

    def modify(self, fd: int, flags: int) -> None:
        self._epoll.modify(fd, flags)

    def unregister(self, fd: int) -> None:
        """Stop waiting on ``fd`` (nothing if it is not registered, or the poller is closed)."""
        if not self._epoll.closed:
            with contextlib.suppress(OSError):  # (closing a descriptor unregisters it too)
                self._epoll.unregister(fd)

    def used(self, sock: Socket) -> None:
        """``sock`` was sent on or read from: what it holds is looked at before the next
        wait."""
        self._unread.add(sock)

    def poll(self, timeout_ms: int) -> Ready:
        """(descriptor or socket, flags) of what is ready; waits up to ``timeout_ms`` (-1:
        for ever) when nothing is."""
        unread, self._unread = self._unread, set()
        ready = self._events(unread)
        timeout_s = 0.0 if ready else (-1.0 if timeout_ms < 0 else timeout_ms / 1000)
        seen = {sock for sock, _ in ready}
        fired: list[Socket] = []
        events = self._epoll.poll(timeout_s)
        for fd, flags in events:
            sock = self._sockets.get(fd)
            if sock is None:
                ready.append((fd, flags))
            elif sock not in seen:
                fired.append(sock)
        # (no news: a look at every socket bounds what a lost signal can delay)
        ready += self._events(fired if events or ready else self._flags)
        return ready

    def _events(self, sockets: Iterable[Socket]) -> Ready:
        out: Ready = []
        for sock in sockets:
            flags = int(sock.getsockopt(zmq.EVENTS)) & self._flags[sock]
            if flags:
                out.append((sock, flags))
        return out

    def close(self) -> None:
        self._epoll.close()
