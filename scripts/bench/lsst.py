"""LSST benchmark: one real quantum graph (pipe_base's AddTask on an on-disk SQLite butler)
run by LSST's MPGraphExecutor with 2 processes (fork and spawn) and by zmpexec's drop-in with
2 workers, side by side, each run a fresh process with a fresh repository. Also runs LSST's
executor in-process to get the task's own cost per quantum; overhead per quantum is
``makespan x 2 / quanta - in-process cost``.

    python -m scripts.bench.lsst [--tasks 5 --detectors 25 --reps 3]   # wide: makespans
    python -m scripts.bench.lsst --tasks 100 --detectors 1 --reps 2    # chain: pure overhead
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

# in-process runs give the task's own cost per quantum for each butler mode
VARIANTS = ("lsst-inprocess", "qbb-inprocess", "lsst-fork", "lsst-spawn", "zmpexec", "zmpexec-qbb")
_BASELINE = {"zmpexec-qbb": "qbb-inprocess"}


def run_one(variant: str, tasks: int, detectors: int) -> dict[str, Any]:
    warnings.simplefilter("ignore")
    from lsst.daf.butler import Butler
    from lsst.pipe.base import TaskFactory
    from lsst.pipe.base.mp_graph_executor import MPGraphExecutor as LsstExecutor
    from lsst.pipe.base.single_quantum_executor import SingleQuantumExecutor

    from broker.lsst import MPGraphExecutor as ZmpExecutor
    from examples.lsst_pipeline import make_repo_and_graph

    with tempfile.TemporaryDirectory(prefix="zmplsst-") as tmp:
        _, qgraph = make_repo_and_graph(Path(tmp) / "repo", n_tasks=tasks, n_detectors=detectors)
        butler = Butler.from_config(str(Path(tmp) / "repo"), run="test", writeable=True)
        qexec = SingleQuantumExecutor(butler=butler, task_factory=TaskFactory())
        executor: Any
        if variant == "zmpexec":
            executor = ZmpExecutor(
                num_proc=2, timeout=600, quantum_executor=qexec, run_dir=Path(tmp) / "run"
            )
        elif variant in ("zmpexec-qbb", "qbb-inprocess"):
            procs = 2 if variant == "zmpexec-qbb" else 1
            executor = ZmpExecutor(
                num_proc=procs,
                timeout=600,
                qbb_repo=str(Path(tmp) / "repo"),
                run_dir=Path(tmp) / "run",
            )
        else:
            num_proc = 1 if variant == "lsst-inprocess" else 2
            method = "spawn" if variant == "lsst-spawn" else "fork"
            executor = LsstExecutor(
                num_proc=num_proc,
                timeout=600,
                quantum_executor=qexec,
                start_method=method,  # type: ignore[arg-type]
            )
        t0 = time.perf_counter()
        executor.execute(qgraph)
        makespan = time.perf_counter() - t0
        statuses = {q.status.value for q in executor.getReport().quantaReports}
        steady = makespan  # LSST's executors start a process per quantum: nothing to exclude
        if variant.startswith("zmpexec"):
            # like the anchors: first quantum started -> last one ended (worker start-up,
            # LSST imports in the forkserver and the graph file read are reported apart)
            details = executor.zmpexec_report.quantaDetails.values()
            first = min(d.startTime for d in details)
            steady = max(d.endTime for d in details) - first
    return {
        "variant": variant,
        "quanta": len(qgraph),
        "makespan_s": makespan,
        "steady_s": steady,
        "startup_s": makespan - steady,
        "ok": statuses == {"success"},
    }


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
                [
                    sys.executable,
                    "-m",
                    "scripts.bench.lsst",
                    "--one",
                    variant,
                    "--tasks",
                    str(args.tasks),
                    "--detectors",
                    str(args.detectors),
                ],
                env=env,
                capture_output=True,
                text=True,
                timeout=1800,
            )
            if out.returncode != 0:
                raise RuntimeError(f"{variant} failed:\n{out.stderr[-2000:]}")
            rec = json.loads(out.stdout.strip().splitlines()[-1])
            rec["rep"] = rep
            records.append(rec)
            print(
                f"rep {rep} {variant}: {rec['makespan_s']:.2f}s ok={rec['ok']}",
                file=sys.stderr,
                flush=True,
            )

    def med(v: str, key: str) -> float:
        return float(statistics.median(r[key] for r in records if r["variant"] == v))

    variants = list(dict.fromkeys(r["variant"] for r in records))
    median = {v: med(v, "steady_s") for v in variants}
    n = records[0]["quanta"]
    chain = args.detectors == 1  # one quantum at a time: wall time per quantum, no contention
    shape = "a chain of" if chain else "a wide graph of"
    print(f"{shape} {n} quanta of pipe_base's AddTask, 2 processes, median of {args.reps}")
    unit = "wall ms per quantum" if chain else "worker-ms per quantum"
    print(f"| executor | total s | start-up s | {unit} | overhead ms per quantum |")
    print("|---|---|---|---|---|")
    for v, m in median.items():
        in_process = v.endswith("inprocess")
        per = m * (1 if in_process or chain else 2) / n
        work = median.get(_BASELINE.get(v, "lsst-inprocess"), 0.0) / n
        over = "(baseline)" if in_process else f"{max(0.0, per - work) * 1e3:.1f}"
        total, startup = med(v, "makespan_s"), med(v, "startup_s")
        print(f"| {v} | {total:.2f} | {startup:.2f} | {per * 1e3:.1f} | {over} |")


if __name__ == "__main__":
    main()
