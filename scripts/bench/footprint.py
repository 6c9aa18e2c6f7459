"""Intermediate footprint of a run, side by side across source trees: the example pipeline
(VISITS x DETECTORS) through ``zmpexec run -j N``, and from its summary the peak number of
intermediate datasets alive at once (written, not yet read by every reader), computed the same
way for every tree from the report's timestamps, with the makespan.

    python -m scripts.bench.footprint --visits 100 --detectors 40 --trees /tmp/base,. --reps 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from common.report import Report
from examples.pipeline import make_graph
from scripts.bench.scale import run_in_tree

__all__ = ["peak_intermediates"]


def peak_intermediates(graph: dict[str, Any], report: Report) -> int:
    """The most datasets alive at once: from their producer's end to their last reader's end."""
    ends = {d.id: d.endTime for d in report.quantaDetails.values() if d.endTime is not None}
    produced: dict[str, float] = {}
    last_read: dict[str, float] = {}
    for q in graph["quanta"]:
        for name in q.get("outputs", {}).values():
            if q["id"] in ends:
                produced[name] = ends[q["id"]]
        for name in q.get("inputs", {}).values():
            if q["id"] in ends:
                last_read[name] = max(last_read.get(name, 0.0), ends[q["id"]])
    events = []
    for name, born in produced.items():
        if name in last_read:
            events += [(born, 1), (last_read[name], -1)]
    alive = peak = 0
    for _, change in sorted(events, key=lambda e: (e[0], -e[1])):
        alive += change
        peak = max(peak, alive)
    return peak


def _run(tree: Path, graph_file: Path, jobs: int) -> dict[str, Any]:
    run = run_in_tree(tree, graph_file, jobs, keep=True)
    assert run.report is not None
    return {
        "tree": str(tree),
        "peak_intermediates": peak_intermediates(json.loads(graph_file.read_text()), run.report),
        "reported_peak": run.report.figures.get("peakIntermediates"),
        "makespan_s": run.makespan_s,
        "wall_s": run.wall_s,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--visits", type=int, default=100)
    p.add_argument("--detectors", type=int, default=40)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--trees", default=".", help="comma-separated source trees to compare")
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    trees = [Path(t).resolve() for t in args.trees.split(",")]
    with tempfile.TemporaryDirectory(prefix="zmpfoot-") as tmp:
        graph_file = Path(tmp) / "g.json"
        graph_file.write_text(json.dumps(make_graph(args.visits, args.detectors)))
        rows = [_run(t, graph_file, args.jobs) for _ in range(args.reps) for t in trees]
    for tree in trees:
        mine = [r for r in rows if r["tree"] == str(tree)]
        peak = statistics.median(r["peak_intermediates"] for r in mine)
        makespan = statistics.median(r["makespan_s"] for r in mine)
        reported = {r["reported_peak"] for r in mine}
        print(
            f"{tree}: peak intermediates {peak:.0f} (reported: {sorted(reported, key=str)}),"
            f" makespan {makespan:.2f} s (median of {len(mine)})"
        )


if __name__ == "__main__":
    main()
