"""Reaching a Dask cluster for the dask engine: which cluster (an existing client, a scheduler
address or file, or a local cluster of our own), the transport security we insist on, and the
latency settings a run asks of the scheduler while it lasts. Imports ``distributed``: used only
with ``engine="dask"``.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import dask
from distributed import Client, LocalCluster
from distributed.security import Security

from common.errors import ConfigError

__all__ = ["STREAM_INTERVAL_S", "DaskTarget", "check_security", "connect", "tls_security"]

logger = logging.getLogger(__name__)

_LOOPBACK = ("localhost",)
# Dask batches what it sends on each connection (client 10 ms, scheduler -> worker 5 ms,
# worker and scheduler -> client 2 ms): each is a floor under a chain's hop when only one
# message is in flight. A run lowers them on the connections it uses, and restores them.
STREAM_INTERVAL_S = 0.001


@dataclass(frozen=True, slots=True)
class DaskTarget:
    """Where to run: an existing ``client``, a scheduler ``address`` or ``scheduler_file``
    (reached with ``security``, e.g. from :func:`tls_security`), or (none of them) a local
    cluster of single-threaded worker processes."""

    client: Client | None = None
    address: str | None = None
    scheduler_file: str | None = None
    security: Security | None = None


def tls_security(ca_file: str, cert: str, key: str | None = None) -> Security:
    """Dask's ``Security`` for a TLS cluster (the certificate authority, our certificate and
    its key, PEM files), with encryption required."""
    for path in (ca_file, cert, key):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"TLS file not found: {path}")
    return Security(
        tls_ca_file=ca_file, tls_client_cert=cert, tls_client_key=key, require_encryption=True
    )


def check_security(address: str) -> None:
    """Refuse a plain ``tcp://`` scheduler beyond loopback: use ``tls://`` there."""
    parsed = urlparse(address)
    if parsed.scheme != "tcp":
        return
    host = parsed.hostname or ""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host in _LOOPBACK
    if not loopback:
        raise ConfigError(
            f"refusing the plain tcp:// Dask scheduler {address}: quanta and executors would "
            "travel unencrypted and unauthenticated; use tls:// (Dask's Security)"
        )


def _file_address(scheduler_file: str) -> str:
    try:
        address = json.loads(Path(scheduler_file).read_text())["address"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"cannot read the Dask scheduler file {scheduler_file}: {e}") from e
    if not isinstance(address, str):
        raise ConfigError(f"the Dask scheduler file {scheduler_file} names no address")
    return address


@contextmanager
def connect(target: DaskTarget, num_workers: int) -> Iterator[tuple[Client, bool]]:
    """A client for ``target`` and whether the cluster is our own local one (closed at
    exit, with a client we made)."""
    if target.client is not None:
        check_security(str(target.client.scheduler_info()["address"]))
        yield target.client, False
        return
    if target.address is not None or target.scheduler_file is not None:
        address = target.address or _file_address(str(target.scheduler_file))
        check_security(address)
        security = target.security or Security()  # (Dask's configuration may hold TLS)
        if address.startswith("tls://") and not security.get_connection_args("client").get(
            "ssl_context"
        ):
            raise ConfigError(
                f"the Dask scheduler {address} speaks TLS: give its certificates "
                "(--tls-ca-file, --tls-cert, --tls-key) or Dask's distributed.comm.tls settings"
            )
        try:
            client = Client(address, security=security, timeout="30s")
        except (OSError, TimeoutError) as e:
            raise ConfigError(f"cannot reach the Dask scheduler {address}: {e}") from e
        with client:
            yield client, False
        return
    # Our semantics, not Dask's: a lost worker is our retry, never Dask's; tasks stay on the
    # worker the core chose.
    with dask.config.set(
        {
            "distributed.scheduler.allowed-failures": 0,
            "distributed.scheduler.work-stealing": False,
        }
    ):
        cluster = LocalCluster(
            n_workers=num_workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
    with cluster, Client(cluster) as client:
        yield client, True


def lower_latency(client: Client, workers: list[str]) -> Callable[[], None]:
    """Lower the scheduler's batching intervals towards our client and ``workers`` to
    ``STREAM_INTERVAL_S``; returns what restores them. Best effort: a scheduler that refuses
    to run our function (``distributed.scheduler.pickle`` off) keeps its intervals."""
    interval = STREAM_INTERVAL_S
    client_id = client.id

    # Defined here so that it travels by value (the scheduler need not have zmpexec).
    def tune(dask_scheduler: Any) -> dict[str, float]:
        comms = {a: dask_scheduler.stream_comms.get(a) for a in workers}
        comms[client_id] = dask_scheduler.client_comms.get(client_id)
        before = {}
        for name, comm in comms.items():
            if comm is not None and hasattr(comm, "interval"):
                before[name] = comm.interval
                comm.interval = min(comm.interval, interval)
        return before

    try:
        before = client.run_on_scheduler(tune)
    except Exception as e:
        logger.info("the Dask scheduler keeps its batching intervals: %s", e)
        return lambda: None

    def restore() -> None:
        def untune(dask_scheduler: Any) -> None:
            for name, value in before.items():
                comm = dask_scheduler.stream_comms.get(name) or dask_scheduler.client_comms.get(
                    name
                )
                if comm is not None:
                    comm.interval = value

        try:
            client.run_on_scheduler(untune)
        except Exception as e:
            logger.info("could not restore the Dask scheduler's batching intervals: %s", e)

    return restore
