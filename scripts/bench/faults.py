"""Fault figures for the notes (a benchmark, not a test): how fast faults are seen and how
well runs survive them. Real processes throughout.

    python -m scripts.bench.faults [--cycles 50]

Prints: detection latency of a SIGKILLed and of a SIGSTOPped worker, how late timeout kills
land, how long until the last process is gone after the run is SIGKILLed, frames of garbage
survived (on the ZeroMQ socket, and strangers on the executor link), and quanta lost or run
twice over random kill-and-resume cycles.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import zmq

from broker import MPGraphExecutor, MPGraphExecutorError
from broker.transport.links import link_path_for
from common.butler import Butler
from common.codec import encode
from common.framing import HEADER
from common.graph import QuantumGraph
from common.protocol import Heartbeat, Ready
from common.quantum import Quantum
from scripts.bench.procs import gone, worker_agents
from worker.executor import TaskQuantumExecutor

ROOT = Path(__file__).resolve().parents[2]


def sleepers(n: int, seconds: float, prefix: str = "s") -> QuantumGraph:
    """``n`` independent quanta that sleep ``seconds`` each."""
    return QuantumGraph.from_quanta(
        [
            Quantum(
                id=f"{prefix}{i}",
                task_label="sleep",
                task="examples.drills:sleep",
                config={"seconds": seconds},
                outputs={"out": f"{prefix}{i}"},
            )
            for i in range(n)
        ]
    )


def _busy(tmp: Path, ex: MPGraphExecutor) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        srv = ex._server
        if srv is not None and sum(len(w.in_flight) for w in srv.core.registry.workers()) >= 2:
            return
        time.sleep(0.002)
    raise RuntimeError("workers never got busy")


def detection(sig: int, reps: int, **options: Any) -> list[float]:
    """Seconds from signalling an agent mid-quantum to the broker declaring it lost."""
    out = []
    for _ in range(reps):
        with tempfile.TemporaryDirectory() as tmp:
            ex = MPGraphExecutor(
                2, 60.0, TaskQuantumExecutor(), run_dir=Path(tmp) / "run", prefetch=0, **options
            )
            t = threading.Thread(
                target=ex.execute,
                args=(sleepers(4, 2.0), Butler(Path(tmp) / "repo")),
            )
            t.start()
            _busy(Path(tmp), ex)
            victim = worker_agents()[0]
            t0 = time.monotonic()
            os.kill(victim.pid, sig)
            t.join(120)
            assert ex.timings is not None
            lost = [when for when, pid, _ in ex.timings.worker_losses if pid == victim.pid]
            out.append(lost[0] - t0)
    return out


def stopped_before_registering(reps: int, startup_timeout_s: float = 3.0) -> list[float]:
    """Seconds from SIGSTOP of an agent that has not registered yet (caught as it starts) to
    its broker killing it."""
    out = []
    for _ in range(reps):
        with tempfile.TemporaryDirectory() as tmp:
            ex = MPGraphExecutor(
                2,
                60.0,
                TaskQuantumExecutor(),
                run_dir=Path(tmp) / "run",
                startup_timeout_s=startup_timeout_s,
            )
            t = threading.Thread(
                target=ex.execute, args=(sleepers(4, 0.5), Butler(Path(tmp) / "repo"))
            )
            t.start()
            deadline = time.monotonic() + 30
            while not (agents := worker_agents()) and time.monotonic() < deadline:
                time.sleep(0.0005)
            victim = agents[0]
            victim.send_signal(signal.SIGSTOP)
            t0 = time.monotonic()
            while not gone(victim) and time.monotonic() < deadline + 60:
                time.sleep(0.005)
            out.append(time.monotonic() - t0)
            t.join(120)
    return out


def dead_child(reps: int) -> list[float]:
    """Seconds from SIGKILL of an executor child mid-quantum to its broker failing the
    quantum (the agent's report)."""
    out = []
    for _ in range(reps):
        with tempfile.TemporaryDirectory() as tmp:
            ex = MPGraphExecutor(
                2, 60.0, TaskQuantumExecutor(), run_dir=Path(tmp) / "run", prefetch=0
            )
            t = threading.Thread(
                target=ex.execute, args=(sleepers(4, 2.0), Butler(Path(tmp) / "repo"))
            )
            t.start()
            _busy(Path(tmp), ex)
            child = next(g for a in worker_agents() for c in a.children() for g in c.children())
            srv = ex._server
            assert srv is not None
            failed_before = srv.core.status(time.monotonic()).count("failed")
            t0 = time.monotonic()
            child.send_signal(signal.SIGKILL)
            while srv.core.status(time.monotonic()).count("failed") == failed_before:
                time.sleep(0.0005)
            out.append(time.monotonic() - t0)
            t.join(120)
    return out


def timeout_lateness(reps: int, timeout_s: float = 0.5) -> list[float]:
    """Seconds between a quantum's timeout and the end of its (killed) attempt."""
    graph = sleepers(reps, 30.0, prefix="h")
    with tempfile.TemporaryDirectory() as tmp:
        ex = MPGraphExecutor(2, timeout_s, TaskQuantumExecutor(), run_dir=Path(tmp) / "run")
        try:
            ex.execute(graph, Butler(Path(tmp) / "repo"))
        except MPGraphExecutorError:
            pass
        details = ex.getReport().quantaDetails.values()
        return [
            d.endTime - d.startTime - timeout_s
            for d in details
            if d.endTime is not None and d.startTime is not None
        ]


def _cli(tmp: Path, *args: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "scripts.cli", *args],
        cwd=tmp,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def last_exit_after_kill(reps: int) -> list[float]:
    """Seconds from SIGKILL of ``zmpexec run`` to its last descendant being gone."""
    out = []
    for _ in range(reps):
        with tempfile.TemporaryDirectory() as tmp:
            sleepers(4, 60.0).save(Path(tmp) / "g.json")
            proc = _cli(Path(tmp), "run", "g.json", "-j", "2")
            logs = Path(tmp) / "zmpexec-repo" / "runs" / "main" / "logs"
            deadline = time.monotonic() + 30
            while len(list(logs.glob(".capture-*"))) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            family = psutil.Process(proc.pid).children(recursive=True)
            t0 = time.monotonic()
            proc.kill()
            proc.wait()
            while not all(gone(p) for p in family):
                time.sleep(0.002)
            out.append(time.monotonic() - t0)
    return out


def _under_fire(attack: Callable[[str], None]) -> bool:
    """Run 20 short quanta while ``attack(endpoint)`` throws things at the broker; whether the
    run still succeeded."""
    with tempfile.TemporaryDirectory() as tmp:
        ex = MPGraphExecutor(2, 60.0, TaskQuantumExecutor(), run_dir=Path(tmp) / "run")
        errors: list[BaseException] = []

        def run() -> None:
            try:
                ex.execute(sleepers(20, 0.2), Butler(Path(tmp) / "repo"))
            except BaseException as e:
                errors.append(e)

        t = threading.Thread(target=run)
        t.start()
        while ex.endpoint is None:
            time.sleep(0.01)
        attack(ex.endpoint)
        t.join(120)
        return not errors


def fuzz(frames: int) -> tuple[int, bool]:
    """Garbage frames thrown at a running broker's ZeroMQ socket; whether the run succeeded."""
    rng = random.Random(7)

    def attack(endpoint: str) -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(endpoint)
        for i in range(frames):
            kind = i % 3
            frame = (
                rng.randbytes(rng.randrange(1, 300))
                if kind == 0
                else encode(Heartbeat(), version=rng.randrange(2, 99))
                if kind == 1
                else encode(Heartbeat())
            )
            s.send(frame)
        s.close()
        ctx.term()

    return frames, _under_fire(attack)


def link_fuzz(connections: int) -> tuple[int, bool]:
    """Strangers on the executor link (raw bytes, framed garbage, oversized lengths, a READY
    naming no worker, a message before READY), each on a connection of its own; whether the
    run still succeeded."""
    rng = random.Random(11)
    ready = encode(Ready("nobody", 4242, 1))
    early = encode(Heartbeat())

    def attack(endpoint: str) -> None:
        path = link_path_for(endpoint)
        assert path is not None
        for i in range(connections):
            kind = i % 5
            data = (
                rng.randbytes(rng.randrange(1, 300))
                if kind == 0
                else _framed(rng.randbytes(rng.randrange(1, 300)))
                if kind == 1
                else HEADER.pack(0xFFFFFFFF) + b"x"
                if kind == 2
                else _framed(ready)
                if kind == 3
                else _framed(early)
            )
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as sock:
                sock.connect(str(path))
                sock.sendall(data)

    return connections, _under_fire(attack)


def _framed(frame: bytes) -> bytes:
    return HEADER.pack(len(frame)) + frame


def kill_resume(cycles: int) -> tuple[int, int, int]:
    """(kills, quanta lost, quanta run twice) over ``cycles`` random kill-and-resume cycles."""
    rng = random.Random(11)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        record = tmp / "record.txt"
        common = {
            "repo": str(tmp / "zmpexec-repo"),
            "run": "main",
            "record": str(record),
            "seconds": 0.05,
        }
        qs = [
            Quantum(
                id=f"c{c}-{i}",
                task_label="journaled",
                task="examples.drills:journaled",
                inputs={f"c{c}-{i - 1}": f"c{c}-{i - 1}"} if i else {},
                outputs={f"c{c}-{i}": f"c{c}-{i}"},
                config={**common, "me": f"c{c}-{i}", "out": f"c{c}-{i}"},
            )
            for c in range(20)
            for i in range(20)
        ]
        QuantumGraph.from_quanta(qs).save(tmp / "g.json")
        kills = 0
        proc = _cli(tmp, "run", "g.json", "-j", "2")
        while kills < cycles:
            try:
                proc.wait(timeout=rng.uniform(0.2, 0.7))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                kills += 1
            else:
                break
            proc = _cli(tmp, "run", "g.json", "-j", "2", "--resume")
        proc.wait()
        if proc.returncode != 0:
            proc = _cli(tmp, "run", "g.json", "-j", "2", "--resume")
            proc.wait()
        butler = Butler(tmp / "zmpexec-repo", "main")
        lost = sum(1 for q in qs if not butler.exists(q.id))
        twice = sum(1 for line in record.read_text().splitlines() if line.startswith("DUP"))
        return kills, lost, twice


def _show(name: str, values: list[float]) -> None:
    lo, mid, hi = min(values) * 1e3, statistics.median(values) * 1e3, max(values) * 1e3
    print(f"{name}: median {mid:.1f} ms (min {lo:.1f}, max {hi:.1f}, n={len(values)})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--cycles", type=int, default=50)
    args = p.parse_args()
    _show("SIGKILLed worker seen (pidfd)", detection(signal.SIGKILL, args.reps))
    _show(
        "SIGSTOPped worker seen (heartbeat 0.2s x 3)",
        detection(signal.SIGSTOP, args.reps, heartbeat_interval_s=0.2, liveness=3),
    )
    _show(
        "agent SIGSTOPped before registering killed (start-up timeout 3s)",
        stopped_before_registering(args.reps),
    )
    _show("SIGKILLed executor child's quantum failed", dead_child(args.reps))
    _show("timeout kill lateness (timeout 0.5s)", timeout_lateness(args.reps))
    _show("last process gone after SIGKILL of zmpexec run", last_exit_after_kill(args.reps))
    frames, ok = fuzz(20000)
    print(f"fuzz: {frames} garbage frames, run {'completed correctly' if ok else 'FAILED'}")
    links, ok = link_fuzz(2000)
    print(f"link fuzz: {links} strangers, run {'completed correctly' if ok else 'FAILED'}")
    kills, lost, twice = kill_resume(args.cycles)
    print(f"kill-and-resume: {kills} SIGKILLs, {lost} quanta lost, {twice} run twice")


if __name__ == "__main__":
    main()
