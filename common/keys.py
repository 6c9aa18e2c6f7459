"""CURVE key material for tcp endpoints: the broker's key pair and the allow-listed worker key
pair, written mode 0600 into the run directory. Owns the files, not the sockets.

    RUN_DIR/curve/server.key          broker public key (workers need it)
    RUN_DIR/curve/server.key_secret   broker key pair
    RUN_DIR/curve/client.key_secret   worker key pair (workers present it)
    RUN_DIR/curve/allowed/client.key  public keys the broker accepts (ZAP allow-list)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import zmq.auth

from common.errors import ConfigError

__all__ = ["ClientKeys", "ServerKeys", "create_keys", "load_client_keys", "load_server_keys"]


@dataclass(frozen=True, slots=True)
class ServerKeys:
    public: bytes
    secret: bytes
    allowed_dir: Path


@dataclass(frozen=True, slots=True)
class ClientKeys:
    public: bytes
    secret: bytes
    server_public: bytes


def create_keys(curve_dir: Path) -> ServerKeys:
    """Make fresh key pairs for one broker (replacing older ones)."""
    allowed = curve_dir / "allowed"
    allowed.mkdir(parents=True, exist_ok=True)
    os.chmod(curve_dir, 0o700)
    for path in list(curve_dir.glob("*.key*")) + list(allowed.glob("*.key*")):
        path.unlink()
    zmq.auth.create_certificates(curve_dir, "server")
    zmq.auth.create_certificates(curve_dir, "client")
    os.replace(curve_dir / "client.key", allowed / "client.key")
    for path in [*curve_dir.glob("*.key*"), *allowed.glob("*.key*")]:
        os.chmod(path, 0o600)
    return load_server_keys(curve_dir)


def load_server_keys(curve_dir: Path) -> ServerKeys:
    """The broker key pair and the allow-list directory (ConfigError if missing)."""
    try:
        public, secret = zmq.auth.load_certificate(curve_dir / "server.key_secret")
    except (OSError, ValueError) as e:
        raise ConfigError(f"no usable CURVE keys in {curve_dir}: {e}") from e
    if secret is None:
        raise ConfigError(f"no CURVE secret key in {curve_dir / 'server.key_secret'}")
    return ServerKeys(public, secret, curve_dir / "allowed")


def load_client_keys(curve_dir: Path) -> ClientKeys:
    """The worker key pair and the broker's public key (ConfigError if missing)."""
    try:
        public, secret = zmq.auth.load_certificate(curve_dir / "client.key_secret")
        server_public, _ = zmq.auth.load_certificate(curve_dir / "server.key")
    except (OSError, ValueError) as e:
        raise ConfigError(f"no usable CURVE keys in {curve_dir}: {e}") from e
    if secret is None:
        raise ConfigError(f"{curve_dir / 'client.key_secret'} holds no secret key")
    return ClientKeys(public, secret, server_public)
