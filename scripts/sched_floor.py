"""The floor of a Python broker on this host, for the makespan workloads (W3, W4): a minimal
broker with everything zmpexec adds taken away, to tell the scheduling policy's cost from the
per-quantum overhead (a benchmark, run by hand; not a test).

Two forked workers on socket pairs; the broker sends ``[quantum, duration]`` msgpack frames in
critical-path order (bottom levels from the true durations, or with ``--ranks label`` from each
label's mean duration, as zmpexec learns them) with ``--depth`` quanta per worker (1: the
running one only), and counts down each quantum's parents as results come back. No journal,
ledger, validation, log capture, timeouts, heartbeats or follow-ons. ``--shared K`` queues
quanta in one ``SOCK_SEQPACKET`` socket that both workers read instead (ProcessPool's way: K
beyond the running ones, committed to no worker).

    PYTHONPATH=../shared/anchors python -m scripts.sched_floor --workloads W3,W4 --depth 1,2
    PYTHONPATH=../shared/anchors python -m scripts.sched_floor --workloads W4 --ranks label \
        --depth 1 --shared 0,1
"""

from __future__ import annotations

import argparse
import heapq
import importlib
import os
import selectors
import socket
import statistics
import struct
import sys
import time
from typing import Any

import msgpack

_HEADER = struct.Struct("<I")


def _send(sock: socket.socket, obj: Any) -> None:
    data = msgpack.packb(obj)
    sock.sendall(_HEADER.pack(len(data)) + data)


def _frames(sock: socket.socket, buf: bytearray) -> list[Any]:
    """The messages complete after one read; EOFError once the peer is gone."""
    chunk = sock.recv(1 << 16)
    if not chunk:
        raise EOFError
    buf += chunk
    out = []
    while len(buf) >= _HEADER.size:
        (n,) = _HEADER.unpack_from(buf, 0)
        if len(buf) < _HEADER.size + n:
            break
        out.append(msgpack.unpackb(bytes(buf[_HEADER.size : _HEADER.size + n])))
        del buf[: _HEADER.size + n]
    return out


def _worker(sock: socket.socket, shared: socket.socket | None, body: Any) -> None:
    buf = bytearray()
    pending: list[Any] = []
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ, sock)
    if shared is not None:
        sel.register(shared, selectors.EVENT_READ, shared)
    while True:
        while not pending:
            for key, _ in sel.select():
                source: socket.socket = key.data
                try:
                    if source is sock:
                        pending += _frames(sock, buf)
                        continue
                    message = source.recv(1 << 10, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    continue  # the other worker took it
                except EOFError:
                    os._exit(0)
                if not message:
                    os._exit(0)
                pending.append(msgpack.unpackb(message))
        qid, duration = pending.pop(0)
        body(qid, duration)
        _send(sock, qid)


def _label_ranks(wl: Any) -> dict[int, float]:
    """Bottom levels from each label's mean duration (what the ranks see once learned)."""
    graph = wl.graph
    per_label: dict[str, list[float]] = {}
    for q in graph:
        per_label.setdefault(graph.nodes[q]["label"], []).append(wl.duration(q))
    mean = {label: statistics.fmean(d) for label, d in per_label.items()}
    ranks: dict[int, float] = {}
    for q in reversed(wl.order()):
        below = max((ranks[c] for c in graph.successors(q)), default=0.0)
        ranks[q] = mean[graph.nodes[q]["label"]] + below
    return ranks


def run(name: str, depth: int, *, shared: int | None = None, ranks: str = "true") -> float:
    """One run of workload ``name``: makespan over the lower bound. ``shared``: quanta queued
    in a queue both workers read (beyond the running ones) instead of ``depth`` per worker."""
    workloads = importlib.import_module("workloads")
    wl = workloads.build(name)
    graph = wl.graph
    rank = wl.bottom_levels() if ranks == "true" else _label_ranks(wl)
    queue_w, queue_r = (
        socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        if shared is not None
        else (None, None)
    )
    socks = []
    for _ in range(2):
        ours, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            ours.close()
            if queue_w is not None:
                queue_w.close()
            _worker(theirs, queue_r, workloads.quantum)
        theirs.close()
        socks.append(ours)
    if queue_r is not None:
        queue_r.close()
    waiting = {q: graph.in_degree(q) for q in graph}
    ready = [(-rank[q], q) for q in graph if waiting[q] == 0]
    heapq.heapify(ready)
    held, bufs = [0, 0], [bytearray(), bytearray()]
    outstanding = 0  # sent and not finished, with a shared queue
    sel = selectors.DefaultSelector()
    for i, sock in enumerate(socks):
        sel.register(sock, selectors.EVENT_READ, i)

    def fill() -> None:
        nonlocal outstanding
        if queue_w is not None and shared is not None:
            while outstanding < len(socks) + shared and ready:
                _, q = heapq.heappop(ready)
                queue_w.send(msgpack.packb([q, graph.nodes[q]["duration"]]))
                outstanding += 1
            return
        for i in (0, 1):
            while held[i] < depth and ready:
                _, q = heapq.heappop(ready)
                _send(socks[i], [q, graph.nodes[q]["duration"]])
                held[i] += 1

    start, done = time.monotonic(), 0
    fill()
    while done < wl.n:
        for key, _ in sel.select():
            i = key.data
            for q in _frames(socks[i], bufs[i]):
                held[i] -= 1
                outstanding -= 1
                done += 1
                for child in graph.successors(q):
                    waiting[child] -= 1
                    if waiting[child] == 0:
                        heapq.heappush(ready, (-rank[child], child))
        fill()
    makespan = time.monotonic() - start
    sel.close()
    for sock in socks:
        sock.close()
    if queue_w is not None:
        queue_w.close()
    for _ in socks:
        os.wait()
    return float(makespan / wl.lower_bound())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="W3,W4")
    parser.add_argument("--depth", default="1,2", help="quanta per worker, comma-separated")
    parser.add_argument(
        "--shared", default="", help="quanta queued for both workers at once, comma-separated"
    )
    parser.add_argument("--ranks", choices=("true", "label"), default="true")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    modes: list[tuple[int, int | None]] = [(int(d), None) for d in args.depth.split(",") if d]
    modes += [(1, int(k)) for k in args.shared.split(",") if k]
    for name in args.workloads.split(","):
        results: dict[tuple[int, int | None], list[float]] = {mode: [] for mode in modes}
        for _ in range(args.reps):  # interleaved: the host's swings hit every mode alike
            for depth, shared in modes:
                results[depth, shared].append(run(name, depth, shared=shared, ranks=args.ranks))
        for (depth, shared), ratios in results.items():
            mode = f"depth {depth}" if shared is None else f"shared queue of {shared}"
            print(
                f"{name} {mode} ({args.ranks} ranks): makespan / LB median "
                f"{statistics.median(ratios):.3f} "
                f"({min(ratios):.3f}-{max(ratios):.3f}, n={len(ratios)})",
                file=sys.stderr,
            )


if __name__ == "__main__":
    main()
