"""Provenance at -j 2: a graph of pipe_base's AddTask (2 tasks x N/2 detectors) run by
``zmpexec lsst run --qbb -j 2 --provenance FILE``; what finishing the run costs: registering
the outputs (LSST's ``transfer_from_graph``) and then writing the provenance graph from what
the quanta left (time, how far each raised the process's peak memory), and the file's size.

    python -m scripts.bench.lsst_provenance [--sizes 2000,20000]
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

from scripts.bench.lsst_logs import build_graph, run_qbb

_STEP = re.compile(r"\((?P<s>[\d.]+)s, peak memory \+(?P<mb>\d+) MB\)")


def measure(quanta: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="zmpprov-") as tmp:
        root = Path(tmp)
        graph = build_graph(root, quanta)
        stderr, wall = run_qbb(root, graph, "--provenance", str(root / "p.qg"))
        registered = next(ln for ln in stderr.splitlines() if ln.startswith("registered"))
        provenance = next(ln for ln in stderr.splitlines() if ln.startswith("provenance"))
        reg, prov = _STEP.search(registered), _STEP.search(provenance)
        assert reg is not None and prov is not None
        return {
            "run_s": wall,
            "transfer_s": float(reg["s"]),
            "transfer_mb": float(reg["mb"]),
            "provenance_s": float(prov["s"]),
            "provenance_mb": float(prov["mb"]),
            "file_mb": (root / "p.qg").stat().st_size / 2**20,
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="2000,20000")
    args = p.parse_args()
    print(
        "| quanta | run s | transfer_from_graph s | +MB | provenance s | +MB | file MB |\n"
        "|---|---|---|---|---|---|---|"
    )
    for n in (int(s) for s in args.sizes.split(",")):
        r = measure(n)
        print(
            f"| {n:,} | {r['run_s']:.1f} | {r['transfer_s']:.1f} | {r['transfer_mb']:.0f} "
            f"| {r['provenance_s']:.1f} | {r['provenance_mb']:.0f} | {r['file_mb']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
