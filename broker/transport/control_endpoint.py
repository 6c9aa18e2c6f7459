"""Status and cancel requests (``zmpexec status`` / ``cancel``) for a driver without a ROUTER
socket of its own (the dask engine): a ROUTER bound on the run's private endpoint that answers
from the core's status. Touches only its socket; decides nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import zmq

from broker.core.droplog import DropLog
from broker.core.events import StopRequested
from broker.drivers.progress import answer_control
from common.codec import decode, encode
from common.errors import ProtocolError
from common.protocol import Cancel, StatusRequest
from common.status import RunStatus

__all__ = ["ControlEndpoint"]

logger = logging.getLogger(__name__)


class ControlEndpoint:
    """Bound at ``endpoint``; ``socket`` goes into the driver's poller, ``serve`` answers what
    arrived and returns a stop request if a client asked to cancel."""

    def __init__(self, endpoint: str) -> None:
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.socket = self._ctx.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(endpoint)
        self._drops = DropLog(logger)

    def serve(self, status: Callable[[], RunStatus], now: float) -> StopRequested | None:
        stop = None
        while True:
            try:
                identity, frame = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return stop
            except ValueError:  # not [identity, frame]
                continue
            try:
                msg = decode(frame)
            except ProtocolError as e:
                self._drops.warn("dropping a bad control frame: %s", e, now=now)
                continue
            if isinstance(msg, StatusRequest | Cancel):
                reply, asked = answer_control(msg, status())
                self.socket.send_multipart([identity, encode(reply)], zmq.NOBLOCK)
                stop = asked or stop

    def close(self) -> None:
        self.socket.close(0)
        self._ctx.term()
