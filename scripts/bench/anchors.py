"""Benchmark zmpexec on the shared anchor workloads (W1-W5, ``anchors/workloads.py``), side by
side with peers run in the same session, each run a fresh process, repetitions interleaved.

    python -m scripts.bench.anchors --anchors ../shared/anchors --reps 3
    python -m scripts.bench.anchors --anchors ../shared/anchors --workloads W2 --peers ppe-fork

Metrics as in the anchors: W1 quanta/s, W2 us/hop, W3/W4 makespan over the lower bound. The
timed region is first dispatch to last result; worker start-up is reported separately.
Variants: ``zmpexec`` calls the workload body directly (like the peers); ``zmpexec-butler``
goes through TaskQuantumExecutor and stores every output in the embedded butler.

W5 (heterogeneous memory): ``zmpexec`` runs it as ``zmpexec run GRAPH -j 8 --memory 1500MB``
with the graph's per-label ``resources`` block (declared), ``zmpexec-learned`` without it
(memory learned); peers ``ppe-safe``, ``ppe-j8``, ``dask-res``. Its records add the anchors'
memory figures (``peak_task_mb``, ``over_budget``, ``marked``) from the tasks' own marks.

``--workers N`` runs every executor with N workers instead of the anchors' 2 (the lower bound
follows): with 1 on this 2-vCPU host the broker has a core of its own, which tells its CPU
apart from its latency. zmpexec then still runs a broker and a worker process (not in-process).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.butler import Butler
from common.graph import QuantumGraph
from common.quantum import Quantum
from common.report import Reason
from scripts.bench.anchor_workers import with_workers

# peer -> (anchor venv or None for this interpreter, runner script, extra arguments)
PEERS: dict[str, tuple[str | None, str, list[str]]] = {
    "zmq-floor": (None, "run_zmq.py", []),
    "ppe-fork": (None, "run_ppe.py", []),
    "dask-submit": ("dask", "run_dask.py", ["--mode", "submit"]),
    "parsl-htex": ("parsl", "run_parsl.py", []),
    "lsst-mpexec-fork": ("lsst", "run_lsst.py", ["--start-method", "fork"]),
    # W5's peers (they run W5 only)
    "ppe-safe": (None, "run_ppe.py", ["--width", "safe"]),
    "ppe-j8": (None, "run_ppe.py", ["--width", "8"]),
    "dask-res": ("dask", "run_dask.py", ["--mode", "res"]),
}
_W5_ONLY = {"ppe-safe", "ppe-j8", "dask-res"}
# LSST's executor costs ~55 ms/quantum with fork: W1 runs on a subset (its metric is a rate).
_SUBSETS = {("lsst-mpexec-fork", "W1"): 200}
VARIANTS = ("zmpexec", "zmpexec-butler")
# on request (needs the [dask] extra): the dask engine on a local cluster of NUM_WORKERS
# single-threaded processes, like the dask-submit anchor
OPTIONAL_VARIANTS = ("zmpexec-dask", "zmpexec-learned")


class WorkloadExecutor:
    """Calls ``workloads.quantum`` directly, like the peer anchors (no butler I/O)."""

    def __init__(self) -> None:
        self._body: Callable[..., int] | None = None  # resolved in the worker, once

    def execute(self, quantum: Quantum, butler: Butler) -> None:
        if self._body is None:
            self._body = importlib.import_module("workloads").quantum
        qid = int(quantum.id)
        if self._body(qid, float(quantum.config["duration"])) != qid:
            raise RuntimeError(f"quantum {qid} returned a wrong result")


class MemoryWorkloadExecutor:
    """W5's body (``workloads.mem_quantum``): maps and touches its MB, holds them for its
    duration, marks its start and end in the run's marks file."""

    def __init__(self, marks: str) -> None:
        self._marks = marks
        self._body: Callable[..., int] | None = None

    def execute(self, quantum: Quantum, butler: Butler) -> None:
        if self._body is None:
            self._body = importlib.import_module("workloads").mem_quantum
        qid, c = int(quantum.id), quantum.config
        if self._body(qid, float(c["duration"]), int(c["mb"]), self._marks) != qid:
            raise RuntimeError(f"quantum {qid} returned a wrong result")


def to_graph(wl: Any, *, declared: bool = True) -> QuantumGraph:
    """A workload's DAG as quanta running ``workloads:quantum`` (W5: ``mem_quantum``, with its
    labels' memory as a ``resources`` block when ``declared``); quantum i stores dataset
    ``d<i>``. Dependencies are ordering edges (the body takes no inputs by name)."""
    w5 = wl.meta.get("budget_mb") is not None
    quanta = [
        Quantum(
            id=str(q),
            task_label=wl.graph.nodes[q]["label"],
            task="workloads:mem_quantum" if w5 else "workloads:quantum",
            data_id=dict(wl.graph.nodes[q]["data_id"]),
            outputs={"out": f"d{q}"},
            config={"qid": q, "duration": wl.duration(q), **({"mb": wl.mem(q)} if w5 else {})},
        )
        for q in wl.order()
    ]
    edges = [(str(p), str(q)) for q in wl.order() for p in wl.parents(q)]
    blocks = None
    if w5 and declared:
        blocks = {
            wl.graph.nodes[q]["label"]: {"memory": wl.mem(q)} for q in wl.order()
        }  # (one size per label)
    return QuantumGraph.from_quanta(quanta, edges, resources=blocks)


def run_one(variant: str, workload: str, workers: int | None = None) -> dict[str, Any]:
    """One measurement in this (fresh) process."""
    from broker import MPGraphExecutor
    from scripts.bench.anchors import (
        MemoryWorkloadExecutor as ImportableMemory,
    )
    from scripts.bench.anchors import (
        WorkloadExecutor as Importable,  # not __main__'s: workers import it
    )
    from worker.executor import TaskQuantumExecutor

    workloads = importlib.import_module("workloads")
    if workers is not None:
        with_workers(workloads, workers)
    wl = workloads.build(workload)
    w5 = workload == "W5"
    graph = to_graph(wl, declared=variant != "zmpexec-learned")
    n = workloads.NUM_WORKERS
    engine: dict[str, Any] = {"engine": "dask"} if variant == "zmpexec-dask" else {}
    if w5:  # as ``zmpexec run GRAPH -j 8 --memory 1500MB``
        n = wl.meta["workers"]
        engine["memory"] = wl.meta["budget_mb"]
    if n == 1 and not engine:  # one local worker through the broker, as ``zmpexec run -j 1``
        engine["local_workers"] = 1
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="zmpbench-") as tmp:
        marks = str(Path(tmp) / "marks")
        executor: Any = TaskQuantumExecutor() if variant == "zmpexec-butler" else Importable()
        if w5:
            executor = ImportableMemory(marks)
        butler = Butler(Path(tmp) / "repo")
        ex = MPGraphExecutor(n, None, executor, run_dir=Path(tmp) / "run", **engine)
        t0 = time.perf_counter()
        ex.execute(graph, butler)
        wall = time.perf_counter() - t0
        if variant == "zmpexec-butler":
            last = wl.order()[-1]
            assert butler.get(f"d{last}") == last
        if w5:
            figures = workloads.memory_figures(wl, marks)
            figures["memory_kills"] = sum(
                1 for _, d in ex.getReport().entries() if d.reason is Reason.MEMORY
            )
    t = ex.timings
    assert t is not None and t.first_dispatch is not None and t.last_result is not None
    makespan = t.last_result - t.first_dispatch
    return {
        "anchor": variant,
        "workload": workload,
        "ok": True,
        "workers": n,
        "startup_s": t.first_dispatch - t.started,
        "wall_s": wall,
        **workloads.metrics(wl, makespan),
        **figures,
    }


def _run_peer(
    anchors: Path, venvs: Path, peer: str, workload: str, workers: int | None = None
) -> dict[str, Any] | None:
    venv, script, extra = PEERS[peer]
    python = sys.executable if venv is None else str(venvs / venv / "bin" / "python")
    if venv == "dask" and not Path(python).exists() and importlib.util.find_spec("distributed"):
        python = sys.executable  # the [dask] extra installed here is the same distributed
    if not Path(python).exists():
        print(f"skipping {peer}: no {python} (run {anchors}/setup.sh)", file=sys.stderr)
        return None
    if peer == "zmq-floor":
        if workload not in ("W1", "W2"):
            return None
        args = ["--mode", "pingpong2" if workload == "W1" else "pingpong1"]
    elif (peer in _W5_ONLY) != (workload == "W5"):
        return None  # W5's peers run only W5, the others skip it
    else:
        args = ["--workload", workload, *extra]
        if (peer, workload) in _SUBSETS:
            args += ["--subset", str(_SUBSETS[peer, workload])]
    env = dict(os.environ, PYTHONPATH=str(anchors))
    command = [python, str(anchors / script), *args]
    if workers is not None:  # by path: the peer's venv has nothing of ours
        command[1:1] = [str(Path(__file__).with_name("anchor_workers.py")), str(workers)]
    out = subprocess.run(
        command,
        env=env,
        cwd="/tmp",
        capture_output=True,
        text=True,
        timeout=900,
    )
    if out.returncode != 0:
        print(f"{peer} {workload} failed: {out.stderr[-500:]}", file=sys.stderr)
        return None
    rec: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    if peer == "zmq-floor":  # its record is per round trip; express it as the workload metric
        us = rec.get("us_per_round_trip")
        rec = {"anchor": peer, "workload": workload, "ok": True, "startup_s": rec.get("startup_s")}
        if us is not None:
            rec.update(
                {"us_per_hop": us}
                if workload == "W2"
                else {"quanta_per_s": 1e6 / us * 1.0, "us_per_quantum": us}
            )
    rec["anchor"] = peer
    return rec


def _run_variant(
    anchors: Path, variant: str, workload: str, workers: int | None = None
) -> dict[str, Any] | None:
    """One run of our own ``variant``; None (its error printed) if it failed, so one failure
    does not cost the whole session's figures (``main`` exits 1 at the end)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(anchors), os.getcwd()]))
    more = [] if workers is None else ["--workers", str(workers)]
    out = subprocess.run(
        [sys.executable, "-m", "scripts.bench.anchors", "--one", variant, workload, *more],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if out.returncode != 0:
        print(f"{variant} {workload} FAILED:\n{out.stderr[-3000:]}", file=sys.stderr)
        return None
    rec: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return rec


_METRIC = {
    "W1": "quanta_per_s",
    "W2": "us_per_hop",
    "W3": "ratio_to_lb",
    "W4": "ratio_to_lb",
    "W5": "ratio_to_lb",
}


def _num(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _table(records: list[dict[str, Any]], workloads: list[str]) -> str:
    names = list(dict.fromkeys(r["anchor"] for r in records))
    head = (
        "| executor | "
        + " | ".join(
            {
                "W1": "W1 quanta/s",
                "W2": "W2 us/hop",
                "W3": "W3 / LB",
                "W4": "W4 / LB",
                "W5": "W5 / LB (peak MB)",
            }[w]
            for w in workloads
        )
        + " | startup s |"
    )
    lines = [head, "|" + "---|" * (len(workloads) + 2)]
    for name in names:
        cells = []
        for w in workloads:
            vals = [
                r[_METRIC[w]]
                for r in records
                if r["anchor"] == name and r["workload"] == w and _METRIC[w] in r
            ]
            cell = (
                f"{_num(statistics.median(vals))} ({_num(min(vals))}-{_num(max(vals))})"
                if vals
                else "-"
            )
            peaks = [
                r["peak_task_mb"]
                for r in records
                if r["anchor"] == name and r["workload"] == w and "peak_task_mb" in r
            ]
            if peaks:
                cell += f" ({max(peaks):,} MB)"
            cells.append(cell)
        ups = [r["startup_s"] for r in records if r["anchor"] == name and r.get("startup_s")]
        cells.append(f"{statistics.median(ups):.3f}" if ups else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--anchors", type=Path, default=Path("../shared/anchors"))
    p.add_argument(
        "--venvs",
        type=Path,
        default=Path("/tmp/anchors-venvs"),
        help="where the anchors' setup.sh put the peers' venvs",
    )
    p.add_argument("--workloads", default="W1,W2,W3,W4")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--peers", default=",".join(PEERS))
    p.add_argument("--reps", type=int, default=3)
    p.add_argument(
        "--workers", type=int, default=None, help="workers per executor (default: the anchors' 2)"
    )
    p.add_argument("--out", type=Path, default=None, help="append JSON lines here")
    p.add_argument("--one", nargs=2, metavar=("VARIANT", "WORKLOAD"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        variant, workload = args.one
        print(json.dumps(run_one(variant, workload, args.workers)))
        return
    if args.workers is not None and args.workers < 1:
        p.error("--workers must be at least 1")
    anchors = args.anchors.resolve()
    workloads = args.workloads.split(",")
    variants = [v for v in args.variants.split(",") if v]
    peers = [v for v in args.peers.split(",") if v]
    unknown = [n for n in variants if n not in VARIANTS + OPTIONAL_VARIANTS]
    unknown += [n for n in peers if n not in PEERS]
    if unknown:
        p.error(
            f"unknown {', '.join(unknown)}: variants are {', '.join(VARIANTS + OPTIONAL_VARIANTS)};"
            f" peers {', '.join(PEERS)} (--peers '' for none)"
        )
    records: list[dict[str, Any]] = []
    failed = 0
    for rep in range(args.reps):
        for w in workloads:
            for name in variants + peers:
                rec = (
                    _run_variant(anchors, name, w, args.workers)
                    if name in VARIANTS + OPTIONAL_VARIANTS
                    else _run_peer(anchors, args.venvs, name, w, args.workers)
                )
                if rec is None:
                    failed += name in VARIANTS + OPTIONAL_VARIANTS
                    continue
                rec["rep"] = rep
                records.append(rec)
                print(
                    f"rep {rep} {w} {name}: "
                    + ", ".join(
                        f"{k}={rec[k]:.4g}"
                        for k in ("quanta_per_s", "us_per_hop", "ratio_to_lb", "makespan_s")
                        if k in rec
                    ),
                    file=sys.stderr,
                    flush=True,
                )
                if args.out:
                    with args.out.open("a") as f:
                        f.write(json.dumps(rec) + "\n")
    print(_table(records, workloads))
    if failed:
        sys.exit(f"{failed} run(s) of zmpexec failed: see above")


if __name__ == "__main__":
    main()
