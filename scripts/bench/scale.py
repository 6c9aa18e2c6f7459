"""Scale curve: LSST-shaped graphs (``../shared/anchors/scale_graph.py``: visits x 189
detectors x isr -> calibrate -> measure, a gather per visit) of 10^4 .. 10^6 quanta through
``zmpexec run -j 2`` (embedded butler, journal, summary). Per size: graph load + validate
time (and a bare ``json.load`` of the file beside it), broker peak RSS and its marginal cost
per quantum, quanta/s between the first start and the last end, peak intermediates.

    python -m scripts.bench.scale --anchors ../shared/anchors --sizes 10000,100000

LSST mode (``--lsst-sizes 200,4000``): pipe_base's AddTask, 2 tasks x N/2 detectors on an
on-disk butler, as a ``.qg`` file through ``zmpexec lsst run -j 2``: broker peak RSS, the
largest worker-side process's peak RSS, and worker-ms per quantum (first dispatch to last
result, from the run's journal): flat across sizes when nothing grows with the graph.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from common.report import Report
from common.summary import read_summary

__all__ = ["RunOutcome", "measure", "run_in_tree"]

_LOAD = """
import json, pathlib, sys, time
from common.graph import QuantumGraph
t0 = time.perf_counter(); json.load(open(sys.argv[1])); t1 = time.perf_counter()
graph = QuantumGraph.load(sys.argv[1]); t2 = time.perf_counter()
graph.validate(None); t3 = time.perf_counter()
out = {"json_load_s": t1 - t0, "load_s": t2 - t1, "validate_s": t3 - t2}
binary = pathlib.Path(sys.argv[1]).with_suffix(".zmpg")
if pathlib.Path("common/graphfile.py").exists():  # a tree with the binary form
    graph.save(binary); del graph
    t0 = time.perf_counter(); QuantumGraph.load(binary); t1 = time.perf_counter()
    out["binary_load_s"] = t1 - t0
print(json.dumps(out))
"""


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """One ``zmpexec run`` of a source tree, seen from outside: figures from its summary (and
    the whole report when asked for)."""

    quanta: int
    makespan_s: float  # first quantum start to last quantum end
    figures: dict[str, float]
    wall_s: float
    broker_peak_rss_mb: float
    report: Report | None


def run_in_tree(tree: Path, graph_file: Path, jobs: int, *, keep: bool = False) -> RunOutcome:
    """``zmpexec run GRAPH -j JOBS --summary`` with ``tree``'s code, in a scratch repository;
    ``keep`` the whole report (small graphs: it is held in memory)."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    with tempfile.TemporaryDirectory(prefix="zmprun-") as tmp:
        argv = [sys.executable, "-m", "scripts.cli", "run", str(graph_file), "-j", str(jobs)]
        argv += ["--repo", f"{tmp}/repo", "--summary", f"{tmp}/s.json"]
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            argv, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        rss = max((own for _, own, _ in _tree_samples(proc)), default=0) / 2**20
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"zmpexec run exited {proc.returncode} in {tree}")
        report = read_summary(Path(f"{tmp}/s.json"))  # entries parsed as iterated
        first, last, n = math.inf, -math.inf, 0
        for _, d in report.entries():
            n += 1
            if d.startTime is not None:
                first = min(first, d.startTime)
            if d.endTime is not None:
                last = max(last, d.endTime)
        kept = Report.from_json(report.to_json()) if keep else None
        return RunOutcome(n, last - first, dict(report.figures), wall, rss, kept)


_LSST_GRAPH = """
import sys, warnings
warnings.simplefilter("ignore")
from pathlib import Path
from lsst.pipe.base.quantum_graph import PredictedQuantumGraphComponents
from examples.lsst_pipeline import make_repo_and_graph
root, n = Path(sys.argv[1]), int(sys.argv[2])
_, qgraph = make_repo_and_graph(root / "repo", n_tasks=2, n_detectors=n // 2)
PredictedQuantumGraphComponents.from_old_quantum_graph(qgraph).write(str(root / "g.qg"))
"""


def _tree_samples(proc: subprocess.Popen[bytes]) -> list[tuple[float, int, int]]:
    """Wait for ``proc``, sampling (wall time, its RSS, the largest descendant's RSS)."""
    handle = psutil.Process(proc.pid)
    samples = []
    while proc.poll() is None:
        try:
            own = handle.memory_info().rss
            others = [c.memory_info().rss for c in handle.children(recursive=True)]
            samples.append((time.time(), own, max(others, default=0)))
        except psutil.Error:
            pass
        time.sleep(0.05)
    return samples


def measure_lsst(tree: Path, n: int, jobs: int) -> dict[str, Any]:
    """``zmpexec lsst run --qbb`` of a fresh repository and graph of ``n`` quanta. Peaks are
    taken up to the last quantum's end: LSST's ``transfer_from_graph``, which then registers
    the outputs, reads the whole graph itself."""
    with tempfile.TemporaryDirectory(prefix="zmplsst-") as tmp:
        subprocess.run(  # the repository's datastore path is absolute: one per run
            [sys.executable, "-c", _LSST_GRAPH, tmp, str(n)],
            check=True,
            capture_output=True,
            env=dict(os.environ, PYTHONPATH=str(Path.cwd())),
        )
        argv = [sys.executable, "-m", "scripts.cli", "lsst", "run", f"{tmp}/g.qg", "--qbb"]
        argv += ["--butler", f"{tmp}/repo", "-j", str(jobs), "--run-dir", f"{tmp}/run"]
        env = dict(os.environ, PYTHONPATH=str(tree))
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            argv, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        samples = _tree_samples(proc)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            assert proc.stderr is not None
            raise RuntimeError(f"lsst run exited {proc.returncode}: {proc.stderr.read()[-2000:]!r}")
        with sqlite3.connect(f"{tmp}/run/journal.sqlite3") as db:
            first = db.execute(
                "SELECT min(time) FROM transitions WHERE state = 'running'"
            ).fetchone()[0]
            (last, n) = db.execute(
                "SELECT max(time), count(*) FROM transitions WHERE state = 'success'"
            ).fetchone()
    running = [(own, other) for t, own, other in samples if t <= last]
    return {
        "quanta": n,
        "broker_peak_rss_mb": max(own for own, _ in running) / 2**20,
        "worker_peak_rss_mb": max(other for _, other in running) / 2**20,
        "worker_ms_per_quantum": (last - first) * jobs / n * 1e3,
        "wall_s": wall,
    }


def lsst_curve(trees: list[Path], sizes: list[int], jobs: int) -> None:
    print("| tree | quanta | broker peak RSS MB | largest worker process MB | worker-ms/quantum |")
    print("|---|---|---|---|---|")
    for n in sizes:
        for tree in trees:
            r = measure_lsst(tree, n, jobs)
            print(
                f"| {tree.name} | {r['quanta']:,} | {r['broker_peak_rss_mb']:,.0f} | "
                f"{r['worker_peak_rss_mb']:,.0f} | {r['worker_ms_per_quantum']:.1f} |",
                flush=True,
            )


def measure(tree: Path, graph_file: Path, jobs: int) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    loaded = subprocess.run(
        [sys.executable, "-c", _LOAD, str(graph_file)],
        cwd=tree,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    out: dict[str, Any] = json.loads(loaded.stdout.strip().splitlines()[-1])
    binary = graph_file.with_suffix(".zmpg")
    run = run_in_tree(tree, binary if "binary_load_s" in out else graph_file, jobs)
    out["broker_peak_rss_mb"] = run.broker_peak_rss_mb
    out["wall_s"] = run.wall_s
    out["quanta"] = run.quanta
    out["quanta_per_s"] = out["quanta"] / run.makespan_s
    out["peak_intermediates"] = run.figures.get("peakIntermediates")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--anchors", type=Path, default=Path("../shared/anchors"))
    p.add_argument("--sizes", default="10000,100000", help="comma-separated quanta counts")
    p.add_argument("--trees", default=".", help="comma-separated source trees to compare")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--lsst-sizes", default="", help="LSST-mode quanta counts, e.g. 200,4000")
    args = p.parse_args()
    trees = [Path(t).resolve() for t in args.trees.split(",")]
    if args.lsst_sizes:
        lsst_curve(trees, [int(x) for x in args.lsst_sizes.split(",")], args.jobs)
    if not args.sizes:
        return
    print(
        "| tree | quanta | json.load s | JSON load s | validate s | .zmpg load s | "
        "broker peak RSS MB | KB/quantum | quanta/s | peak intermediates | wall s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    smallest: dict[Path, tuple[int, float]] = {}
    with tempfile.TemporaryDirectory(prefix="zmpscale-") as tmp:
        for n in (int(x) for x in args.sizes.split(",")):
            graph_file = Path(tmp) / f"g{n}.json"
            subprocess.run(
                [sys.executable, str(args.anchors / "scale_graph.py"), str(n), str(graph_file)],
                check=True,
                capture_output=True,
            )
            for tree in trees:
                r = measure(tree, graph_file, args.jobs)
                base = smallest.setdefault(tree, (r["quanta"], r["broker_peak_rss_mb"]))
                marginal = (
                    (r["broker_peak_rss_mb"] - base[1]) * 1024 / (r["quanta"] - base[0])
                    if r["quanta"] > base[0]
                    else float("nan")
                )
                print(
                    f"| {tree.name} | {r['quanta']:,} | {r['json_load_s']:.2f} | "
                    f"{r['load_s']:.2f} | {r['validate_s']:.2f} | "
                    f"{r.get('binary_load_s', math.nan):.2f} | "
                    f"{r['broker_peak_rss_mb']:,.0f} | {marginal:.1f} | "
                    f"{r['quanta_per_s']:,.0f} | {r['peak_intermediates']} | {r['wall_s']:.1f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
