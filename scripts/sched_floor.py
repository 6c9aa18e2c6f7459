"""The floor of a Python broker on this host, for the makespan workloads (W3, W4): a minimal
broker with everything zmpexec adds taken away, to tell the scheduling policy's cost from the
per-quantum overhead (a benchmark, run by hand; not a test).

Two forked workers on socket pairs; the broker sends ``[quantum, duration]`` msgpack frames in
critical-path order (bottom levels from the true durations) with ``--depth`` quanta per worker
(1: the running one only), and counts down each quantum's parents as results come back. No
journal, ledger, validation, log capture, timeouts, heartbeats or follow-ons.

    PYTHONPATH=../shared/anchors python -m scripts.sched_floor --workloads W3,W4 --depth 1,2
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


def _worker(sock: socket.socket, body: Any) -> None:
    buf = bytearray()
    pending: list[Any] = []
    while True:
        while not pending:
            try:
                pending = _frames(sock, buf)
            except EOFError:
                os._exit(0)
        qid, duration = pending.pop(0)
        body(qid, duration)
        _send(sock, qid)


def run(name: str, depth: int) -> float:
    """One run of workload ``name``: makespan over the lower bound."""
    workloads = importlib.import_module("workloads")
    wl = workloads.build(name)
    graph = wl.graph
    rank = wl.bottom_levels()
    socks = []
    for _ in range(2):
        ours, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            ours.close()
            _worker(theirs, workloads.quantum)
        theirs.close()
        socks.append(ours)
    waiting = {q: graph.in_degree(q) for q in graph}
    ready = [(-rank[q], q) for q in graph if waiting[q] == 0]
    heapq.heapify(ready)
    held, bufs = [0, 0], [bytearray(), bytearray()]
    sel = selectors.DefaultSelector()
    for i, sock in enumerate(socks):
        sel.register(sock, selectors.EVENT_READ, i)

    def fill() -> None:
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
    for _ in socks:
        os.wait()
    return float(makespan / wl.lower_bound())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="W3,W4")
    parser.add_argument("--depth", default="1,2", help="quanta per worker, comma-separated")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    for name in args.workloads.split(","):
        for depth in map(int, args.depth.split(",")):
            ratios = [run(name, depth) for _ in range(args.reps)]
            print(
                f"{name} depth {depth}: makespan / LB median {statistics.median(ratios):.3f} "
                f"({min(ratios):.3f}-{max(ratios):.3f}, n={len(ratios)})",
                file=sys.stderr,
            )


if __name__ == "__main__":
    main()
