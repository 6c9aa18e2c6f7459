"""The worker agent process: owns the DEALER socket, introduces itself to the broker (HELLO ->
WELCOME or REFUSE), then hands the socket to an ``AgentSession`` that relays quanta to the
executor child. Never runs user code.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from types import FrameType

import zmq

from common.codec import decode, encode
from common.errors import ProtocolError
from common.exits import ExitCode
from common.protocol import Hello, Refuse, Shutdown, Welcome
from worker.dealer import connect_dealer
from worker.launch import AgentConfig
from worker.lifecycle import die_with_parent, single_threaded_libraries
from worker.session import AgentSession

__all__ = ["WorkerAgent", "agent_main"]

logger = logging.getLogger(__name__)

_HELLO_STEP_MS = 500  # the HELLO send waits in these steps, so a dead parent is noticed


class WorkerAgent:
    """One worker: handshake, then a session until the broker or a signal ends it."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self._stop_reason: str | None = None
        self._session: AgentSession | None = None
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._poller = zmq.Poller()

    def request_stop(self, reason: str) -> None:
        """Safe from a signal handler: only sets flags the loops read."""
        self._stop_reason = reason
        if self._session is not None:
            self._session.request_stop(reason)

    def run(self) -> ExitCode:
        sock: zmq.Socket[bytes] | None = None
        try:
            sock = connect_dealer(self._ctx, self.config.endpoint, self.config.keys_dir)
            self._poller.register(sock, zmq.POLLIN)
            welcome = self._handshake(sock)
            if not isinstance(welcome, Welcome):
                return welcome
            self._session = AgentSession(self.config, welcome, sock, self._poller)
            if self._stop_reason is not None:
                self._session.request_stop(self._stop_reason)
            return self._session.run()
        finally:
            if sock is not None:
                sock.close(linger=0)
            self._ctx.term()

    def _parent_gone(self) -> bool:
        parent = self.config.parent_pid
        return parent is not None and os.getppid() != parent

    def _handshake(self, sock: zmq.Socket[bytes]) -> Welcome | ExitCode:
        """The broker's WELCOME, or the exit code that says why there is none."""
        deadline = time.monotonic() + self.config.startup_timeout_s
        slots = 1 + self.config.prefetch
        hello = encode(Hello(pid=os.getpid(), host=socket.gethostname(), slots=slots))
        # IMMEDIATE: the HELLO waits until a connection exists, so it is never queued to nowhere.
        sock.setsockopt(zmq.SNDTIMEO, _HELLO_STEP_MS)
        while True:
            try:
                sock.send(hello)
                break
            except zmq.Again:
                if self._parent_gone():
                    return ExitCode.PARENT_GONE
                if self._stop_reason is not None:
                    return ExitCode.OK
                if time.monotonic() > deadline:
                    logger.error(
                        "no broker at %s within %.0fs",
                        self.config.endpoint,
                        self.config.startup_timeout_s,
                    )
                    return ExitCode.NO_BROKER
        sock.setsockopt(zmq.SNDTIMEO, -1)
        while (left := deadline - time.monotonic()) > 0 and self._stop_reason is None:
            if self._parent_gone():
                return ExitCode.PARENT_GONE
            if not sock.poll(int(min(left, 0.5) * 1000)):
                continue
            try:
                msg = decode(sock.recv())
            except ProtocolError as e:
                logger.error("dropping bad frame from broker: %s", e)
                continue
            match msg:
                case Welcome():
                    logger.info("registered as %s", msg.worker_id)
                    return msg
                case Refuse(reason=reason):
                    logger.error("broker refused this worker: %s", reason)
                    return ExitCode.REFUSED
                case Shutdown():
                    return ExitCode.OK
                case _:
                    logger.warning("ignoring %s before WELCOME", type(msg).__name__)
        if self._stop_reason is not None:
            return ExitCode.OK
        logger.error("broker at %s did not answer HELLO", self.config.endpoint)
        return ExitCode.NO_BROKER


def agent_main(config: AgentConfig) -> None:
    """Process entry point for a worker agent (local or attached)."""
    os.setpgid(0, 0)  # Ctrl-C goes to the broker, which shuts workers down in order
    die_with_parent()
    if config.parent_pid is not None and os.getppid() != config.parent_pid:
        sys.exit(ExitCode.PARENT_GONE)  # the parent died before the death signal was armed
    single_threaded_libraries(os.environ)  # before the forkserver that loads task modules
    logging.basicConfig(
        level=config.log_level, format="%(asctime)s worker[%(process)d] %(levelname)s %(message)s"
    )
    agent = WorkerAgent(config)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        agent.request_stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(int(agent.run()))


def main(argv: list[str] | None = None) -> None:
    """``python -m worker.agent``: how a worker starts in a fresh interpreter."""
    agent_main(AgentConfig.from_argv(argv))


if __name__ == "__main__":
    main()
