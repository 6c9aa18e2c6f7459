"""The client side of the broker's control requests (``zmpexec status`` / ``cancel``) and the
run-directory files that say where a running broker listens. A DEALER with a deadline, never
REQ/REP: an unanswered request times out instead of wedging the socket.
"""

from __future__ import annotations

from pathlib import Path

import zmq

from common.codec import decode, encode
from common.errors import ProtocolError, ZmpexecError
from common.protocol import Cancel, StatusReply, StatusRequest
from common.status import RunStatus

__all__ = ["ENDPOINT_FILE", "ControlError", "endpoint_of", "request_cancel", "request_status"]

ENDPOINT_FILE = "endpoint"


class ControlError(ZmpexecError):
    """A control request got no valid answer (no broker there, or it did not reply)."""


def endpoint_of(target: str) -> str:
    """``target`` is an endpoint (``ipc://``, ``tcp://``) or a run directory holding one."""
    if "://" in target:
        return target
    path = Path(target) / ENDPOINT_FILE
    try:
        return path.read_text().strip()
    except OSError as e:
        raise ControlError(f"no running broker recorded in {target} ({path}: {e.strerror})") from e


def _ask(endpoint: str, request: StatusRequest | Cancel, timeout_s: float) -> RunStatus:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        sock.send(encode(request))
        if not sock.poll(int(timeout_s * 1000)):
            raise ControlError(f"no answer from a broker at {endpoint} within {timeout_s:g}s")
        try:
            reply = decode(sock.recv())
        except ProtocolError as e:
            raise ControlError(f"bad answer from {endpoint}: {e}") from e
        if not isinstance(reply, StatusReply):
            raise ControlError(f"unexpected {type(reply).__name__} from {endpoint}")
        try:
            return RunStatus.from_dict(reply.status)
        except ValueError as e:
            raise ControlError(f"bad status from {endpoint}: {e}") from e
    finally:
        sock.close(linger=0)
        ctx.term()


def request_status(endpoint: str, timeout_s: float = 5.0) -> RunStatus:
    return _ask(endpoint, StatusRequest(), timeout_s)


def request_cancel(endpoint: str, *, abort: bool, timeout_s: float = 5.0) -> RunStatus:
    return _ask(endpoint, Cancel(abort=abort), timeout_s)
