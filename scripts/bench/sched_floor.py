"""The floor of a Python broker on this host, for the makespan workloads (W3, W4): a minimal
broker with everything zmpexec adds taken away, to tell the scheduling policy's cost from the
per-quantum overhead (a benchmark, run by hand; not a test).

Two forked workers on socket pairs; the broker sends ``[quantum, duration]`` msgpack frames in
critical-path order (bottom levels from the true durations, or with ``--ranks label`` from each
label's mean duration, as zmpexec learns them) with ``--depth`` quanta per worker (1: the
running one only), and counts down each quantum's parents as results come back. No journal,
ledger, validation, log capture, timeouts, heartbeats or follow-ons. ``--shared K`` queues
quanta in one ``SOCK_SEQPACKET`` socket that both workers read instead (ProcessPool's way: K
beyond the running ones, committed to no worker). ``--self`` adds workers that schedule
themselves, with no broker at all: a ready heap and the parents' countdown in shared memory
under one lock, a semaphore counting what is ready (the ceiling of a design without a broker
wake-up per quantum).

    PYTHONPATH=../shared/anchors python -m scripts.bench.sched_floor --workloads W3,W4 --depth 1,2
    PYTHONPATH=../shared/anchors python -m scripts.bench.sched_floor --workloads W4 --ranks label \
        --depth 1 --shared 0,1 --self
"""

from __future__ import annotations

import argparse
import heapq
import importlib
import multiprocessing
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


class _SharedHeap:
    """A binary heap of quantum indices by rank in shared memory (callers hold the lock)."""

    def __init__(self, keys: list[tuple[float, int]]) -> None:
        self._keys = keys  # (-rank, index) per quantum: a min-heap pops the most critical
        self._heap = multiprocessing.RawArray("i", len(keys))
        self._size = multiprocessing.RawValue("i", 0)

    def __len__(self) -> int:
        return int(self._size.value)

    def push(self, q: int) -> None:
        heap, keys = self._heap, self._keys
        i = self._size.value
        self._size.value = i + 1
        while i:
            parent = (i - 1) >> 1
            if keys[heap[parent]] <= keys[q]:
                break
            heap[i] = heap[parent]
            i = parent
        heap[i] = q

    def pop(self) -> int:
        heap, keys = self._heap, self._keys
        top, last = heap[0], self._size.value - 1
        self._size.value = last
        if last:
            q, i = heap[last], 0
            while (c := 2 * i + 1) < last:
                if c + 1 < last and keys[heap[c + 1]] < keys[heap[c]]:
                    c += 1
                if keys[heap[c]] >= keys[q]:
                    break
                heap[i] = heap[c]
                i = c
            heap[i] = q
        return int(top)


def run_self(name: str, *, ranks: str = "true", workers: int = 2) -> float:
    """One run of workload ``name`` by workers that take their next quantum themselves:
    makespan (from forking them) over the lower bound."""
    workloads = importlib.import_module("workloads")
    wl = workloads.build(name)
    graph, n = wl.graph, wl.n
    rank = wl.bottom_levels() if ranks == "true" else _label_ranks(wl)
    successors = [list(graph.successors(q)) for q in range(n)]
    durations = [wl.duration(q) for q in range(n)]
    waiting = multiprocessing.RawArray("i", [graph.in_degree(q) for q in range(n)])
    done = multiprocessing.RawValue("i", 0)
    heap = _SharedHeap([(-rank[q], q) for q in range(n)])
    lock, ready = multiprocessing.Lock(), multiprocessing.Semaphore(0)
    for q in range(n):
        if waiting[q] == 0:
            heap.push(q)
            ready.release()

    def work() -> None:
        while True:
            ready.acquire()
            with lock:
                q = heap.pop() if done.value < n else -1
            if q < 0:  # the last one woke us to leave (never leave holding the lock)
                ready.release()
                return
            workloads.quantum(q, durations[q])
            released = 0
            with lock:
                for child in successors[q]:
                    waiting[child] -= 1
                    if waiting[child] == 0:
                        heap.push(child)
                        released += 1
                done.value += 1
                last = done.value >= n
            for _ in range(released + last):
                ready.release()

    start = time.monotonic()
    for _ in range(workers):
        if os.fork() == 0:
            try:
                work()
            finally:
                os._exit(0)
    for _ in range(workers):
        os.wait()
    return float((time.monotonic() - start) / wl.lower_bound())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="W3,W4")
    parser.add_argument("--depth", default="1,2", help="quanta per worker, comma-separated")
    parser.add_argument(
        "--shared", default="", help="quanta queued for both workers at once, comma-separated"
    )
    parser.add_argument("--ranks", choices=("true", "label"), default="true")
    parser.add_argument("--self", action="store_true", help="and workers scheduling themselves")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    modes: list[tuple[int, int | None]] = [(int(d), None) for d in args.depth.split(",") if d]
    modes += [(1, int(k)) for k in args.shared.split(",") if k]
    for name in args.workloads.split(","):
        results: dict[str, list[float]] = {}
        for _ in range(args.reps):  # interleaved: the host's swings hit every mode alike
            for depth, shared in modes:
                mode = f"depth {depth}" if shared is None else f"shared queue of {shared}"
                ratio = run(name, depth, shared=shared, ranks=args.ranks)
                results.setdefault(mode, []).append(ratio)
            if args.self:
                ratio = run_self(name, ranks=args.ranks)
                results.setdefault("self-scheduling", []).append(ratio)
        for mode, ratios in results.items():
            print(
                f"{name} {mode} ({args.ranks} ranks): makespan / LB median "
                f"{statistics.median(ratios):.3f} "
                f"({min(ratios):.3f}-{max(ratios):.3f}, n={len(ratios)})",
                file=sys.stderr,
            )


if __name__ == "__main__":
    main()
