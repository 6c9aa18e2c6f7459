"""LSST benchmark: one real quantum graph (pipe_base's AddTask on an on-disk SQLite butler)
run by LSST's MPGraphExecutor with 2 processes (fork and spawn) and by zmpexec's drop-in with
2 workers, side by side, each run a fresh process with a fresh repository. Also runs LSST's
executor in-process to get the task's own cost per quantum; overhead per quantum is
``makespan x 2 / quanta - in-process cost``.

    python -m scripts.bench_lsst [--tasks 5 --detectors 25 --reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

VARIANTS = ("lsst-inprocess", "lsst-fork", "lsst-spawn", "zmpexec")


def run_one(variant: str, tasks: int, detectors: int) -> dict[str, Any]:
    warnings.simplefilter("ignore")
    from lsst.daf.butler import Butler
    from lsst.pipe.base import TaskFactory
    from lsst.pipe.base.mp_graph_executor import MPGraphExecutor as LsstExecutor
    from lsst.pipe.base.single_quantum_executor import SingleQuantumExecutor

    from broker.lsst import MPGraphExecutor as ZmpExecutor
    from tests.lsst_tasks import make_repo_and_graph

    with tempfile.TemporaryDirectory(prefix="zmplsst-") as tmp:
        _, qgraph = make_repo_and_graph(Path(tmp) / "repo", n_tasks=tasks, n_detectors=detectors)
        butler = Butler.from_config(str(Path(tmp) / "repo"), run="test", writeable=True)
        qexec = SingleQuantumExecutor(butler=butler, task_factory=TaskFactory())
        executor: Any
        if variant == "zmpexec":
            executor = ZmpExecutor(num_proc=2, timeout=600, quantum_executor=qexec,
                                   run_dir=Path(tmp) / "run")  # fmt: skip
        else:
            num_proc = 1 if variant == "lsst-inprocess" else 2
            method = "spawn" if variant == "lsst-spawn" else "fork"
            executor = LsstExecutor(num_proc=num_proc, timeout=600, quantum_executor=qexec,
                                    start_method=method)  # type: ignore[arg-type]  # fmt: skip
        t0 = time.perf_counter()
        executor.execute(qgraph)
        makespan = time.perf_counter() - t0
        statuses = {q.status.value for q in executor.getReport().quantaReports}
    return {"variant": variant, "quanta": len(qgraph), "makespan_s": makespan,
            "ok": statuses == {"success"}}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", type=int, default=5)
    p.add_argument("--detectors", type=int, default=25)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.tasks, args.detectors)))
        return
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    records: list[dict[str, Any]] = []
    for rep in range(args.reps):
        for variant in args.variants.split(","):
            out = subprocess.run(
                [sys.executable, "-m", "scripts.bench_lsst", "--one", variant, "--tasks",
                 str(args.tasks), "--detectors", str(args.detectors)],
                env=env, capture_output=True, text=True, timeout=1800,
            )  # fmt: skip
            if out.returncode != 0:
                raise RuntimeError(f"{variant} failed:\n{out.stderr[-2000:]}")
            rec = json.loads(out.stdout.strip().splitlines()[-1])
            rec["rep"] = rep
            records.append(rec)
            print(f"rep {rep} {variant}: {rec['makespan_s']:.2f}s ok={rec['ok']}",
                  file=sys.stderr, flush=True)  # fmt: skip
    median = {v: statistics.median(r["makespan_s"] for r in records if r["variant"] == v)
              for v in dict.fromkeys(r["variant"] for r in records)}  # fmt: skip
    n = records[0]["quanta"]
    work = median.get("lsst-inprocess", 0.0) / n  # the task's own cost per quantum
    print(f"{n} quanta, 2 processes; task cost in-process {work * 1e3:.1f} ms/quantum")
    print("| executor | makespan s (median) | ms/quantum (x2 workers) | overhead ms/quantum |")
    print("|---|---|---|---|")
    for v, m in median.items():
        per = (m * (1 if v == "lsst-inprocess" else 2)) / n
        print(f"| {v} | {m:.2f} | {per * 1e3:.1f} | {max(0.0, per - work) * 1e3:.1f} |")


if __name__ == "__main__":
    main()
