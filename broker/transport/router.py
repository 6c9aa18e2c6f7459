"""The broker's ROUTER socket: bind (CURVE with a ZAP allow-list on tcp), read frames into
messages (bad frames dropped with rate-limited warnings, other protocol versions refused),
send without blocking, heartbeat quiet peers, and wait for GOODBYEs before closing. Knows
nothing of quanta or of the run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import zmq
from zmq.auth.thread import ThreadAuthenticator

from broker.core.droplog import DropLog
from common.codec import decode, encode
from common.errors import ProtocolError, ProtocolVersionError
from common.keys import load_server_keys
from common.protocol import Goodbye, Heartbeat, Message, Refuse

__all__ = ["Router"]

logger = logging.getLogger(__name__)

_BATCH = 256  # frames read per wake-up before the loop gets a look at deadlines


class Router:
    """One bound ROUTER socket; ``close`` always releases it (and the ZAP thread)."""

    def __init__(self, endpoint: str, keys_dir: Path | None, drops: DropLog) -> None:
        self._drops = drops
        self._last_sent: dict[bytes, float] = {}
        self._used = True  # sent on or read from since ``take_used`` (see broker.transport.poller)
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._auth: ThreadAuthenticator | None = None
        self.sock = self._ctx.socket(zmq.ROUTER)
        try:
            self.sock.setsockopt(zmq.LINGER, 0)
            self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            if keys_dir is not None:
                self._secure(keys_dir)
            self.sock.bind(endpoint)
        except BaseException:
            self.close(0.0)
            raise

    def _secure(self, keys_dir: Path) -> None:
        """tcp: CURVE with a ZAP allow-list of worker keys; ipc relies on its 0700 directory."""
        keys = load_server_keys(keys_dir)
        self._auth = ThreadAuthenticator(self._ctx)
        self._auth.start()
        self._auth.configure_curve(domain="*", location=str(keys.allowed_dir))
        self.sock.setsockopt(zmq.CURVE_SERVER, 1)
        self.sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
        self.sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)

    def close(self, linger_s: float) -> None:
        """``linger_s`` lets messages just queued (SHUTDOWNs) reach attached workers."""
        if self._auth is not None:
            self._auth.stop()
        self.sock.close(linger=int(linger_s * 1000))
        self._ctx.term()

    def messages(self) -> Iterator[tuple[bytes, Message]]:
        """(identity, message) for the frames waiting now, at most a batch."""
        sock = self.sock
        self._used = True
        for _ in range(_BATCH):
            # EVENTS, not recv-until-EAGAIN: an exception per wake-up costs more than the check.
            if not int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                return
            frames = sock.recv_multipart(zmq.NOBLOCK)
            if len(frames) != 2:
                self._drops.warn("dropping a message of %d frames (expected 2)", len(frames))
                continue
            identity, payload = frames
            try:
                msg = decode(payload)
            except ProtocolVersionError as e:
                self.refuse(identity, f"{e}; upgrade or downgrade the worker")
                continue
            except ProtocolError as e:
                self._drops.warn("dropping bad frame from %r: %s", identity[:16], e)
                continue
            yield identity, msg

    def send(self, identity: bytes, msg: Message) -> bool:
        """False when the peer cannot be reached (gone, or its pipe is full)."""
        return self.send_frame(identity, encode(msg), type(msg).__name__)

    def send_frame(self, identity: bytes, frame: bytes, what: str) -> bool:
        """``send`` for a message encoded already (``what`` names it in a warning)."""
        self._used = True
        try:
            self.sock.send_multipart([identity, frame], zmq.NOBLOCK)
        except zmq.ZMQError as e:  # EHOSTUNREACH (ROUTER_MANDATORY) or a full pipe
            self._drops.warn("cannot send %s to %r: %s", what, identity[:16], e)
            return False
        if identity in self._last_sent:
            self._last_sent[identity] = time.monotonic()
        return True

    def take_used(self) -> bool:
        """Whether the socket was sent on or read from since the last call."""
        used, self._used = self._used, False
        return used

    def refuse(self, identity: bytes, reason: str) -> None:
        self._drops.warn("refusing %r: %s", identity[:16], reason)
        self.send(identity, Refuse(reason=reason))

    def heartbeat(self, peers: Iterable[bytes], now: float, interval_s: float) -> None:
        """A HEARTBEAT to each of ``peers`` sent nothing for ``interval_s``."""
        for identity in peers:
            if now - self._last_sent.get(identity, 0.0) >= interval_s:
                self.send(identity, Heartbeat())  # a tracked peer's clock restarts in send

    def track(self, identity: bytes, now: float) -> None:
        """Heartbeat ``identity`` from now on (when nothing else is sent to it)."""
        self._last_sent[identity] = now

    def forget(self, identity: bytes) -> None:
        self._last_sent.pop(identity, None)

    def await_goodbyes(self, waiting: set[bytes], deadline: float) -> None:
        """Attached workers acknowledge the final SHUTDOWN with GOODBYE: closing the socket
        earlier would drop the SHUTDOWN still queued to a worker busy starting its executor."""
        while waiting and (left := deadline - time.monotonic()) > 0:
            if not self.sock.poll(int(left * 1000) + 1):
                break
            identity, *rest = self.sock.recv_multipart()
            try:
                said_goodbye = len(rest) == 1 and isinstance(decode(rest[0]), Goodbye)
            except ProtocolError:
                said_goodbye = False
            if said_goodbye:
                waiting.discard(identity)
        if waiting:
            logger.warning("%d attached worker(s) did not acknowledge SHUTDOWN", len(waiting))
