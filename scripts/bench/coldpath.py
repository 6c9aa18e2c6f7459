"""Where a quantum's overhead goes, with warm and with cold caches.

The executor child's path (read an ASSIGN off its link, decode it, record it, run it under
log capture, encode and write the RESULT) and the broker's (decode a RESULT, step the core,
splice the next ASSIGN), each part timed per quantum, with a no-op task. "Cold": a 64 MiB
sweep evicts the caches before each quantum, as this VM's neighbours do while a 5 ms task runs
(after one, a few lines of Python cost ~20x their warm time), so this is what W3 and W4 pay.
Run by hand; medians of ``--quanta`` quanta:

    python -m scripts.bench.coldpath [--quanta 400]
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from broker.core import BrokerCore
from broker.core.events import Dispatch, Event, ResultReceived, WorkerJoined, WorkerReady
from common.butler import Butler
from common.codec import AssignFrames, decode, encode
from common.config import ExecutionConfig
from common.framing import HEADER
from common.graph import QuantumGraph
from common.protocol import Assign, Result, ResultStatus
from common.quantum import Quantum
from worker.capture import StandingCapture
from worker.channel import LinkChannel
from worker.meter import AttemptMeter
from worker.record import SharedRecord
from worker.runner import log_file, run_quantum

_SWEEP = np.ones(64 << 20, dtype=np.uint8)


def noop() -> None:
    """The task: nothing, so only the path around it is timed."""


class NoopExecutor:
    def execute(self, quantum: Quantum, butler: Butler) -> None:
        noop()


def _graph(visits: int) -> QuantumGraph:
    """visits x (isr -> calibrate -> measure), as W3 without its coadds."""
    quanta, edges = [], []
    for v in range(visits):
        chain = [f"{step}-{v}" for step in ("isr", "calibrate", "measure")]
        for qid in chain:
            label = qid.split("-")[0]
            quanta.append(
                Quantum(
                    qid, label, "scripts.bench.coldpath:noop", {"visit": v}, {}, {"out": qid}, {}
                )
            )
        edges += [(chain[0], chain[1]), (chain[1], chain[2])]
    return QuantumGraph.from_quanta(quanta, edges)


class Parts:
    """Nanoseconds per named part, one list per part."""

    def __init__(self) -> None:
        self.ns: dict[str, list[int]] = {}
        self._t = 0

    def start(self) -> None:
        self._t = time.perf_counter_ns()

    def lap(self, part: str) -> None:
        now = time.perf_counter_ns()
        self.ns.setdefault(part, []).append(now - self._t)
        self._t = now


def child_path(graph: QuantumGraph, quanta: int, cold: bool, tmp: Path) -> Parts:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp / "link"))
    listener.listen(1)
    channel = LinkChannel(str(tmp / "link"))
    broker_end, _ = listener.accept()
    record = SharedRecord(multiprocessing.get_context("fork"))
    capture = StandingCapture(tmp / "logs")
    executor, butler = NoopExecutor(), Butler(tmp / "repo")
    frames = AssignFrames(graph)
    parts = Parts()
    meter = AttemptMeter(watched=record.peak_kb)
    try:
        for k in range(quanta):
            frame = frames.frame(k % len(graph), 1, None, k + 1)
            broker_end.sendall(HEADER.pack(len(frame)) + frame)
            if cold:
                _SWEEP.sum()
            parts.start()
            raw = channel.recv()
            parts.lap("read the ASSIGN")
            assign = decode(raw)
            assert isinstance(assign, Assign)
            parts.lap("decode it")
            log = log_file(str(tmp / "logs"), assign.quantum.id, assign.attempt)
            record.take(assign.seq, assign.timeout_s, log)
            parts.lap("log path, record it")
            q, attempt = assign.quantum, assign.attempt
            result = run_quantum(executor, butler, q, attempt, capture, log=log, meter=meter)
            record.finished()
            parts.lap("run it (capture, task, result)")
            channel.send(encode(result))
            parts.lap("encode, write the RESULT")
            broker_end.recv(1 << 16)
    finally:
        capture.close()
        meter.close()
        channel.close()
        broker_end.close()
        listener.close()
    return parts


def broker_path(graph: QuantumGraph, cold: bool) -> Parts:
    core = BrokerCore(graph, ExecutionConfig(num_workers=2, local_workers=2), follow_ons=True)
    frames = AssignFrames(graph)
    core.start(0.0)
    joined: list[Event] = [WorkerJoined(b"a", 1, "h", 2, True), WorkerReady(b"a", 1)]
    joined += [WorkerJoined(b"b", 2, "h", 2, True), WorkerReady(b"b", 1)]
    pending = [a for a in core.step(joined, 0.0) if isinstance(a, Dispatch)]
    parts, now = Parts(), 0.0
    while pending and not core.over:
        d = pending.pop(0)
        result = Result(d.quantum_id, d.attempt, ResultStatus.SUCCESS, 0, None, None, None,
                        1.7e9, 1.7e9, 0.005, 50_000, None)  # fmt: skip
        frame = encode(result)
        now += 0.0025
        if cold:
            _SWEEP.sum()
        parts.start()
        msg = decode(frame)
        assert isinstance(msg, Result)
        event = ResultReceived(d.worker, msg)
        parts.lap("decode the RESULT")
        actions = core.step([event], now)
        parts.lap("step the core")
        for a in actions:
            if isinstance(a, Dispatch):
                frames.frame(a.index, a.attempt, a.timeout_s, a.seq, a.after)
                pending.append(a)
        parts.lap("splice the ASSIGNs")
        core.next_deadline(now)
        parts.lap("next deadline")
    return parts


def _table(title: str, run: Callable[[bool], Parts]) -> None:
    warm, cold = run(False), run(True)
    print(f"\n| {title}, us per quantum | warm | cold |\n|---|---|---|")
    totals = [0.0, 0.0]
    for part in warm.ns:
        w, c = (statistics.median(p.ns[part]) / 1e3 for p in (warm, cold))
        totals[0] += w
        totals[1] += c
        print(f"| {part} | {w:.1f} | {c:.1f} |")
    print(f"| total (of medians) | {totals[0]:.1f} | {totals[1]:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quanta", type=int, default=400)
    args = parser.parse_args()
    graph = _graph(max(1, args.quanta // 3))
    with tempfile.TemporaryDirectory(prefix="zc", dir="/tmp") as d:

        def child(cold: bool) -> Parts:
            tmp = Path(d) / ("cold" if cold else "warm")
            tmp.mkdir()
            # (an executor child's capture takes its process's output for good: not ours)
            fds, streams = (os.dup(1), os.dup(2)), (sys.stdout, sys.stderr)
            root = logging.getLogger()
            handlers, level = list(root.handlers), root.level
            try:
                return child_path(graph, args.quanta, cold, tmp)
            finally:
                for fd, target in zip(fds, (1, 2), strict=True):
                    os.dup2(fd, target)
                    os.close(fd)
                sys.stdout, sys.stderr = streams
                root.handlers[:] = handlers
                root.setLevel(level)

        _table("executor child", child)
        _table("broker", lambda cold: broker_path(graph, cold))


if __name__ == "__main__":
    main()
