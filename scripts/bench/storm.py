"""A kill storm (a drill, not a test; ``tests/integration/test_storm.py`` runs a short one):
``zmpexec run`` of chains of journaled quanta while one random worker process is hit every
0.3-0.7 s (SIGKILL of an agent, SIGKILL of an executor child, SIGSTOP of an agent), the broker
itself SIGKILLed at 40 % and the run resumed under the same storm, then a calm ``--resume``
if the stormy one did not succeed.

    python -m scripts.bench.storm [--quanta 12000] [-j 4] [--seed 1]

Prints the hits by kind, how long each stopped agent took to be killed by its broker, every
run's exit code and duration, and the checks: the run ended, every output registered,
nothing finished before the broker's kill run again after it, quanta run again after their
output was registered (a lost result), and processes left running.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from common.graph import QuantumGraph
from common.quantum import Quantum
from scripts.bench.procs import gone, worker_agents

__all__ = ["Storm", "StormOutcome", "run_storm"]

ROOT = Path(__file__).resolve().parents[2]
KINDS = ("kill-agent", "kill-executor", "stop-agent")
_STARTUP_TIMEOUT_S = 60.0  # zmpexec run's default


@dataclass(frozen=True, slots=True)
class Storm:
    """One drill: the graph (``quanta`` in chains of ``chain``), the run's options, the hits."""

    quanta: int = 12_000
    chain: int = 20
    seconds: float = 0.0  # each quantum sleeps this long
    jobs: int = 4
    retries: int = 20
    heartbeat_s: float = 1.0
    liveness: int = 10
    startup_timeout_s: float = _STARTUP_TIMEOUT_S
    hit_every_s: tuple[float, float] = (0.3, 0.7)
    kinds: tuple[str, ...] = KINDS  # of hits, chosen among at random
    broker_kill_at: float = 0.4  # of the quanta registered
    seed: int = 1
    run_limit_s: float = 1800.0  # a run still going after this is hung


@dataclass(slots=True)
class StormOutcome:
    hits: collections.Counter[str] = field(default_factory=collections.Counter)
    # SIGSTOP -> killed by the broker, of agents that had an executor child when stopped (up
    # and running) and of those that had none yet (still starting: the start-up timeout)
    stop_detect_s: list[float] = field(default_factory=list)
    stop_starting_s: list[float] = field(default_factory=list)
    runs: list[tuple[str, int, float]] = field(default_factory=list)  # (phase, exit, seconds)
    ended: bool = True  # every run ended within ``run_limit_s``
    missing: int = 0  # outputs not registered at the end
    redone: int = 0  # quanta registered before the broker's kill, run again after it
    rerun: int = 0  # quanta run again after their output was registered (a lost result)
    left_running: list[int] = field(default_factory=list)  # pids alive after their run ended
    broker_killed_at: int = 0  # outputs registered when the broker was killed
    errors: list[str] = field(default_factory=list)  # the runs' ERROR lines (why they stopped)

    @property
    def runtime_s(self) -> float:
        return sum(seconds for _, _, seconds in self.runs)


def build_graph(storm: Storm, repo: Path, record: Path) -> QuantumGraph:
    """Chains of ``examples.drills:journaled`` quanta that log each run to ``record``."""
    common = {"repo": str(repo), "run": "main", "record": str(record), "seconds": storm.seconds}
    quanta = []
    for c in range(max(1, storm.quanta // storm.chain)):
        for i in range(storm.chain):
            me = f"c{c}-{i}"
            prev = f"c{c}-{i - 1}"
            quanta.append(
                Quantum(
                    id=me,
                    task_label=f"step{i % 4}",
                    task="examples.drills:journaled",
                    inputs={prev: prev} if i else {},
                    outputs={me: me},
                    config={**common, "me": me, "out": me},
                )
            )
    return QuantumGraph.from_quanta(quanta)


class _Run:
    """One ``zmpexec run`` and everything it started."""

    def __init__(self, tmp: Path, storm: Storm, *extra: str) -> None:
        args = [
            *("run", "g.json", "-j", str(storm.jobs), "--retries", str(storm.retries)),
            *("--heartbeat", str(storm.heartbeat_s), "--liveness", str(storm.liveness)),
            *extra,
        ]
        if storm.startup_timeout_s != _STARTUP_TIMEOUT_S:  # (so it also runs older versions)
            args += ["--startup-timeout", str(storm.startup_timeout_s)]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        with (tmp / "broker.log").open("ab") as log:  # (the run writes to its own copy)
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "scripts.cli", *args],
                cwd=tmp,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self.started = time.monotonic()
        self.seen: dict[int, psutil.Process] = {}

    def family(self) -> list[psutil.Process]:
        try:
            procs = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            return []
        for p in procs:
            self.seen.setdefault(p.pid, p)
        return procs

    def agents(self) -> list[psutil.Process]:
        try:
            return worker_agents(psutil.Process(self.proc.pid))
        except psutil.Error:
            return []

    def left_running(self, within_s: float = 10.0) -> list[int]:
        """Pids of this run's processes still alive ``within_s`` after it ended."""
        deadline = time.monotonic() + within_s
        while True:
            alive = [pid for pid, p in self.seen.items() if not gone(p)]
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.05)


def _executors(agent: psutil.Process) -> list[psutil.Process]:
    """The agent's executor children: its grandchildren (the forkserver forks them)."""
    try:
        return [g for c in agent.children() for g in c.children()]
    except psutil.Error:
        return []


def _registered(repo: Path) -> set[str]:
    try:
        with sqlite3.connect(repo / "registry.sqlite3", timeout=30) as conn:
            return {name for (name,) in conn.execute("SELECT name FROM datasets")}
    except sqlite3.Error:
        return set()


class _Hitter:
    """Hits one random worker process of a run every ``hit_every_s``."""

    def __init__(self, storm: Storm, out: StormOutcome) -> None:
        self._rng = random.Random(storm.seed)
        self._every = storm.hit_every_s
        self._kinds = storm.kinds
        self._out = out
        self._stopped: dict[int, tuple[psutil.Process, float, bool]] = {}
        self.next_at = time.monotonic() + self._rng.uniform(*self._every)

    def hit(self, run: _Run) -> None:
        self.next_at = time.monotonic() + self._rng.uniform(*self._every)
        run.family()
        agents = [a for a in run.agents() if a.pid not in self._stopped]
        if not agents:
            return
        kind = self._rng.choice(self._kinds)
        agent = self._rng.choice(agents)
        try:
            if kind == "kill-executor":
                executors = _executors(agent)
                if not executors:
                    return
                executors[0].send_signal(signal.SIGKILL)
            elif kind == "kill-agent":
                agent.send_signal(signal.SIGKILL)
            else:
                up = bool(_executors(agent))
                agent.send_signal(signal.SIGSTOP)
                self._stopped[agent.pid] = (agent, time.monotonic(), up)
        except psutil.Error:
            return
        self._out.hits[kind] += 1

    def watch(self) -> None:
        """Note each stopped agent its broker has killed."""
        for pid, (p, t0, up) in list(self._stopped.items()):
            if gone(p):
                seen = self._out.stop_detect_s if up else self._out.stop_starting_s
                seen.append(time.monotonic() - t0)
                del self._stopped[pid]

    def brokergone(self) -> None:
        """Stopped agents of a killed broker die with it: not a detection."""
        self._stopped.clear()


def _storm_run(
    run: _Run, hitter: _Hitter | None, storm: Storm, kill_at: int | None, repo: Path
) -> int | None:
    """Drive ``run`` to its end under hits; SIGKILL its broker once ``kill_at`` outputs are
    registered (None: never). The exit code, or None if the run hung."""
    next_count = 0.0
    while run.proc.poll() is None:
        now = time.monotonic()
        if now - run.started > storm.run_limit_s:
            run.proc.kill()
            run.proc.wait()
            return None
        run.family()
        if hitter is not None:
            hitter.watch()
            if now >= hitter.next_at:
                hitter.hit(run)
        if kill_at is not None and now >= next_count:
            next_count = now + 0.1
            if len(_registered(repo)) >= kill_at:
                run.proc.kill()
                run.proc.wait()
                if hitter is not None:
                    hitter.brokergone()
                return -signal.SIGKILL
        time.sleep(0.01)
    if hitter is not None:
        hitter.watch()
    return run.proc.returncode


def _records(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    return [tuple(line.split(" ", 1)) for line in path.read_text().splitlines()]  # type: ignore[misc]


def run_storm(storm: Storm, tmp: Path) -> StormOutcome:
    """The drill in directory ``tmp``; what it found."""
    out = StormOutcome()
    repo = tmp / "zmpexec-repo"
    record = tmp / "record.txt"
    graph = build_graph(storm, repo, record)
    graph.save(tmp / "g.json")
    hitter = _Hitter(storm, out)
    phases: list[tuple[str, bool, tuple[str, ...]]] = [
        ("storm", True, ()),
        ("storm --resume", True, ("--resume",)),
        ("calm --resume", False, ("--resume",)),
    ]
    before_kill: set[str] = set()
    for n, (phase, stormy, extra) in enumerate(phases):
        run = _Run(tmp, storm, *extra)
        kill_at = int(storm.broker_kill_at * len(graph)) if n == 0 else None
        code = _storm_run(run, hitter if stormy else None, storm, kill_at, repo)
        out.runs.append((phase, -1 if code is None else code, time.monotonic() - run.started))
        out.left_running += run.left_running()
        if code is None:
            out.ended = False
            break
        if n == 0:
            before_kill = _registered(repo)
            out.broker_killed_at = len(before_kill)
            record.rename(tmp / "record-before-kill.txt")
        elif code == 0:
            break
    after = [me for _, me in _records(record)]
    everything = _records(tmp / "record-before-kill.txt") + _records(record)
    out.redone = len({me for me in after if me in before_kill})
    out.rerun = sum(1 for tag, _ in everything if tag == "DUP")
    out.missing = len(graph) - len(_registered(repo) & set(graph.ids))
    log = (tmp / "broker.log").read_text(errors="replace").splitlines()
    out.errors = [line for line in log if " ERROR " in line]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quanta", type=int, default=12_000)
    p.add_argument("-j", "--jobs", type=int, default=4)
    p.add_argument("--seconds", type=float, default=0.0, help="each quantum sleeps this long")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--heartbeat", type=float, default=1.0)
    p.add_argument("--liveness", type=int, default=10)
    p.add_argument("--run-limit", type=float, default=1800.0, help="a run longer is hung, s")
    p.add_argument("--kinds", default=",".join(KINDS), help="hits to choose among")
    p.add_argument("--keep", type=Path, default=None, help="work here and keep it (logs)")
    args = p.parse_args()
    storm = Storm(
        quanta=args.quanta,
        seconds=args.seconds,
        jobs=args.jobs,
        seed=args.seed,
        heartbeat_s=args.heartbeat,
        liveness=args.liveness,
        run_limit_s=args.run_limit,
        kinds=tuple(args.kinds.split(",")),
    )
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=False)
        out = run_storm(storm, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="zstorm") as tmp:
            out = run_storm(storm, Path(tmp))
    if set(storm.kinds) - set(KINDS):
        p.error(f"--kinds: choose among {', '.join(KINDS)}")
    print(f"quanta {storm.quanta}, -j {storm.jobs}, seed {storm.seed}")
    print("hits: " + ", ".join(f"{k} {out.hits[k]}" for k in KINDS))
    for what, d in (("up", out.stop_detect_s), ("still starting", out.stop_starting_s)):
        if d:
            print(
                f"stopped agent ({what}) killed by its broker after: median "
                f"{statistics.median(d):.2f}s, max {max(d):.2f}s (n={len(d)})"
            )
    print(f"broker SIGKILLed with {out.broker_killed_at} outputs registered")
    for phase, code, seconds in out.runs:
        print(f"  {phase}: exit {code} in {seconds:.1f}s")
    print(f"runtime {out.runtime_s:.1f}s; every run ended: {out.ended}")
    for line in out.errors:
        print(f"  {line}")
    print(
        f"missing outputs {out.missing}; redone after the resume {out.redone}; "
        f"re-run after a lost result {out.rerun}; processes left running {len(out.left_running)}"
    )


if __name__ == "__main__":
    main()
