"""An example pipeline shaped like an LSST one: per-detector isr -> calibrate -> measure, a
per-visit gather, and a coadd over visits. Tasks do a little real numeric work on small images.

``python -m examples.pipeline VISITS DETECTORS > graph.yaml`` writes a graph of it.
"""

from __future__ import annotations

import math
import random
import sys
from typing import Any

import yaml

Image = list[list[float]]
_SIZE = 48


def isr(*, visit: int, detector: int, bias: float = 100.0) -> Image:
    """Make a synthetic raw frame (a star on noise) and subtract the bias."""
    rng = random.Random(visit * 1000 + detector)
    cx, cy = rng.uniform(10, _SIZE - 10), rng.uniform(10, _SIZE - 10)
    return [
        [
            rng.gauss(bias, 3.0) + 500.0 * math.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 8.0) - bias
            for x in range(_SIZE)
        ]
        for y in range(_SIZE)
    ]


def calibrate(*, exposure: Image, gain: float = 1.5) -> Image:
    """Apply the gain and subtract the median background."""
    flat = sorted(v for row in exposure for v in row)
    background = flat[len(flat) // 2]
    return [[(v - background) * gain for v in row] for row in exposure]


def measure(*, calexp: Image, threshold: float = 50.0) -> dict[str, float]:
    """Centroid and flux of the pixels above threshold."""
    flux = sx = sy = 0.0
    for y, row in enumerate(calexp):
        for x, v in enumerate(row):
            if v > threshold:
                flux, sx, sy = flux + v, sx + v * x, sy + v * y
    return {"flux": flux, "x": sx / flux if flux else -1.0, "y": sy / flux if flux else -1.0}


def gather_visit(**sources: dict[str, float]) -> dict[str, float]:
    """Per-visit summary over its detectors."""
    fluxes = [s["flux"] for s in sources.values()]
    return {"detectors": float(len(fluxes)), "mean_flux": sum(fluxes) / len(fluxes)}


def coadd(**visits: dict[str, float]) -> dict[str, float]:
    """Summary over all visits."""
    means = [v["mean_flux"] for v in visits.values()]
    return {"visits": float(len(means)), "mean_flux": sum(means) / len(means)}


def make_graph(visits: int, detectors: int) -> dict[str, Any]:
    """The graph file content for ``visits`` x ``detectors``."""
    quanta: list[dict[str, Any]] = []
    for v in range(visits):
        for d in range(detectors):
            did = {"visit": v, "detector": d}
            tag = f"v{v}-d{d}"
            quanta += [
                {
                    "id": f"isr-{tag}",
                    "task_label": "isr",
                    "task": "examples.pipeline:isr",
                    "data_id": dict(did),
                    "outputs": {"image": f"postisr-{tag}"},
                    "config": {"visit": v, "detector": d},
                },
                {
                    "id": f"calibrate-{tag}",
                    "task_label": "calibrate",
                    "task": "examples.pipeline:calibrate",
                    "data_id": dict(did),
                    "inputs": {"exposure": f"postisr-{tag}"},
                    "outputs": {"calexp": f"calexp-{tag}"},
                },
                {
                    "id": f"measure-{tag}",
                    "task_label": "measure",
                    "task": "examples.pipeline:measure",
                    "data_id": dict(did),
                    "inputs": {"calexp": f"calexp-{tag}"},
                    "outputs": {"src": f"src-{tag}"},
                },
            ]
        quanta.append(
            {
                "id": f"gather-v{v}",
                "task_label": "gather_visit",
                "task": "examples.pipeline:gather_visit",
                "data_id": {"visit": v},
                "inputs": {f"d{d}": f"src-v{v}-d{d}" for d in range(detectors)},
                "outputs": {"summary": f"visit_summary-v{v}"},
            }
        )
    quanta.append(
        {
            "id": "coadd",
            "task_label": "coadd",
            "task": "examples.pipeline:coadd",
            "data_id": {"tract": 0},
            "inputs": {f"v{v}": f"visit_summary-v{v}" for v in range(visits)},
            "outputs": {"coadd": "coadd"},
        }
    )
    return {"quanta": quanta}


if __name__ == "__main__":
    n_visits = int(sys.argv[1]) if len(sys.argv) > 1 else 6
    n_detectors = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    yaml.safe_dump(make_graph(n_visits, n_detectors), sys.stdout, sort_keys=False)
