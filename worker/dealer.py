"""The DEALER socket a worker process (agent or executor child) speaks to its broker on."""

from __future__ import annotations

from pathlib import Path

import zmq

from common.keys import load_client_keys

__all__ = ["connect_dealer"]


def connect_dealer(
    ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, keys_dir: Path | None
) -> zmq.Socket[bytes]:
    """A DEALER connected to ``endpoint`` (CURVE with the keys in ``keys_dir`` on tcp):
    no linger, sends wait for a connection (IMMEDIATE), reconnects with backoff."""
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.IMMEDIATE, 1)
    s.setsockopt(zmq.RECONNECT_IVL, 20)
    s.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)  # exponential backoff while no broker is up
    if keys_dir is not None:
        keys = load_client_keys(keys_dir)
        s.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
        s.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
        s.setsockopt(zmq.CURVE_SERVERKEY, keys.server_public)
    s.connect(endpoint)
    return s
