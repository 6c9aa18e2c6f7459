"""The broker loop's poller on real descriptors and real ZeroMQ sockets."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator

import pytest
import zmq

from broker.transport.poller import POLLIN, POLLOUT, Poller

Socket = zmq.Socket[bytes]


@pytest.fixture
def pair() -> Iterator[tuple[Socket, Socket]]:
    """A ROUTER and a DEALER connected to it over ipc."""
    ctx: zmq.Context[Socket] = zmq.Context()
    directory = tempfile.mkdtemp(prefix="zq", dir="/tmp")
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    for s in (router, dealer):
        s.setsockopt(zmq.LINGER, 0)
    router.bind(f"ipc://{directory}/r")
    dealer.connect(f"ipc://{directory}/r")
    try:
        yield router, dealer
    finally:
        router.close()
        dealer.close()
        ctx.term()
        shutil.rmtree(directory)


@pytest.fixture
def poller() -> Iterator[Poller]:
    p = Poller()
    try:
        yield p
    finally:
        p.close()


def _recv_when_ready(poller: Poller, router: Socket, timeout_ms: int) -> list[bytes]:
    ready = dict(poller.poll(timeout_ms))
    assert ready.get(router) == POLLIN
    return router.recv_multipart(zmq.NOBLOCK)


def test_descriptors_and_sockets_are_reported_when_ready(
    poller: Poller, pair: tuple[Socket, Socket]
) -> None:
    router, dealer = pair
    r, w = os.pipe()
    try:
        poller.register(r, POLLIN)
        poller.register(w, POLLOUT)
        poller.register(router, POLLIN)
        assert dict(poller.poll(0)) == {w: POLLOUT}  # (the socket was looked at: nothing)
        os.write(w, b"x")
        dealer.send(b"hello")
        deadline = time.monotonic() + 10
        seen: dict[object, int] = {}
        while router not in seen and time.monotonic() < deadline:
            seen.update(poller.poll(1000))
        assert seen[r] == POLLIN and seen[router] == POLLIN
        assert router.recv_multipart(zmq.NOBLOCK)[1] == b"hello"
    finally:
        poller.unregister(r)
        poller.unregister(w)
        os.close(r)
        os.close(w)


def test_a_message_whose_signal_was_taken_in_is_reported_once_the_socket_is_said_used(
    poller: Poller, pair: tuple[Socket, Socket]
) -> None:
    # Given a socket registered and looked at (nothing there), then a message arrives ...
    router, dealer = pair
    poller.register(router, POLLIN)
    assert poller.poll(0) == []
    dealer.send(b"one")
    deadline = time.monotonic() + 10
    while not int(router.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
        assert time.monotonic() < deadline, "the message never arrived"
    # ... whose signal the application took in by using the socket: its descriptor is quiet
    # When the loop says it used the socket, the next wait looks before it sleeps
    poller.used(router)
    started = time.monotonic()
    assert _recv_when_ready(poller, router, 30_000)[1] == b"one"
    assert time.monotonic() - started < 10  # (not after the 30 s timeout)
    # And without saying so, the message is still seen when the wait ends with no news
    dealer.send(b"two")
    while not int(router.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
        assert time.monotonic() < deadline, "the message never arrived"
    assert _recv_when_ready(poller, router, 50)[1] == b"two"


def test_unregistering_is_safe_for_closed_descriptors_and_after_close() -> None:
    p = Poller()
    r, w = os.pipe()
    p.register(r, POLLIN)
    os.close(r)
    os.close(w)
    p.unregister(r)  # closed already: the kernel dropped it
    p.close()
    p.unregister(12345)  # after close: nothing to do
