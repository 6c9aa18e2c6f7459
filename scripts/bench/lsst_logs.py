"""LSST log and metadata bytes per quantum under warm executors: a graph of pipe_base's AddTask
(2 tasks x N/2 detectors) run by ``zmpexec lsst run --qbb -j 2`` (quantum-backed butlers: logs
captured in memory, where LSST lists every quantum its executor ran before into each log) on
the local engine and on Dask (a local cluster of 2 workers), for each size; then the bytes of
the log and metadata files per quantum. Flat (the largest size within 1.2 x the smallest)
means a warm executor's logs do not grow with the quanta it ran.

    python -m scripts.bench.lsst_logs [--sizes 200,2000] [--engines local,dask]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path


def build_graph(root: Path, quanta: int) -> Path:
    """A repository at ``root / "repo"`` and its graph, written as ``root / "g.qg"``."""
    warnings.simplefilter("ignore")
    from lsst.pipe.base.quantum_graph import PredictedQuantumGraphComponents

    from examples.lsst_pipeline import make_repo_and_graph

    _, qgraph = make_repo_and_graph(root / "repo", n_tasks=2, n_detectors=quanta // 2)
    PredictedQuantumGraphComponents.from_old_quantum_graph(qgraph).write(str(root / "g.qg"))
    return root / "g.qg"


def run_qbb(root: Path, graph: Path, *extra: str) -> tuple[str, float]:
    """``zmpexec lsst run GRAPH --qbb -j 2`` on ``root / "repo"`` with ``extra`` options:
    its stderr and wall seconds (RuntimeError with its stderr's end if it fails)."""
    argv = [sys.executable, "-m", "scripts.cli", "lsst", "run", str(graph), "--qbb", "-j", "2"]
    argv += ["--butler", str(root / "repo"), "--run-dir", str(root / "r"), *extra]
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    t0 = time.monotonic()
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=7200)
    wall = time.monotonic() - t0
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[3:])} failed:\n{out.stderr[-2000:]}")
    return out.stderr, wall


def _bytes_per_quantum(run: Path, kind: str) -> tuple[int, float]:
    files = [p for p in run.glob(f"*_{kind}/**/*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files) / max(1, len(files))


def measure(quanta: int, engine: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="zmplogs-") as tmp:
        root = Path(tmp)
        graph = build_graph(root, quanta)
        _, wall = run_qbb(root, graph, *(["--engine", "dask"] if engine == "dask" else []))
        logs, log_b = _bytes_per_quantum(root / "repo" / "test", "log")
        metas, meta_b = _bytes_per_quantum(root / "repo" / "test", "metadata")
        if logs != quanta or metas != quanta:
            raise RuntimeError(f"{engine}: {logs} logs, {metas} metadata for {quanta} quanta")
        return {"log_b": log_b, "metadata_b": meta_b, "wall_s": wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="200,2000")
    p.add_argument("--engines", default="local,dask")
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print("| engine | quanta | log B/quantum | metadata B/quantum | run s |")
    print("|---|---|---|---|---|")
    for engine in args.engines.split(","):
        rows = {n: measure(n, engine) for n in sizes}
        for n, r in rows.items():
            print(
                f"| {engine} | {n:,} | {r['log_b']:,.0f} | {r['metadata_b']:,.0f} "
                f"| {r['wall_s']:.1f} |",
                flush=True,
            )
        small, large = rows[min(sizes)], rows[max(sizes)]
        print(
            f"| {engine} | {max(sizes)} / {min(sizes)} | {large['log_b'] / small['log_b']:.2f} x "
            f"| {large['metadata_b'] / small['metadata_b']:.2f} x | |",
            flush=True,
        )


if __name__ == "__main__":
    main()
