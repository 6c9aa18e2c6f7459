"""``zmpexec report --timeline``: a Gantt chart of quanta per worker over time, coloured by
task label, outlined by status, so idle time and the critical path show. PNG or HTML (SVG).
"""

from __future__ import annotations

import io
from pathlib import Path

from common.errors import ConfigError
from common.report import ExecutionStatus, Report

__all__ = ["draw_timeline"]

_EDGE = {
    ExecutionStatus.SUCCESS: ("none", 0.0),
    ExecutionStatus.FAILURE: ("red", 2.0),
    ExecutionStatus.TIMEOUT: ("darkorange", 2.0),
}


def draw_timeline(report: Report, out: Path) -> None:
    if out.suffix not in (".png", ".html", ".svg"):
        raise ConfigError(f"timeline file {out} must end in .png, .svg or .html")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError as e:
        raise ConfigError("--timeline needs matplotlib: pip install 'zmpexec[plot]'") from e
    status = {r.quantumId: r for r in report.quantaReports}
    bars = [
        (d.worker or "?", d.startTime, d.endTime, status[key].taskLabel, status[key].status)
        for key, d in report.quantaDetails.items()
        if d.startTime is not None and d.endTime is not None and d.attempts > 0
    ]
    if not bars:
        raise ConfigError("the report holds no timed quanta to draw")
    t0 = min(b[1] for b in bars)
    workers = sorted({b[0] for b in bars}, key=lambda w: (len(w), w))
    labels = sorted({b[3] for b in bars})
    colours = plt.get_cmap("tab20")
    colour = {label: colours(i % 20) for i, label in enumerate(labels)}
    fig, ax = plt.subplots(figsize=(12, 1.0 + 0.45 * len(workers)))
    for worker, start, end, label, st in bars:
        edge, width = _EDGE.get(st, ("grey", 1.0))
        ax.barh(
            workers.index(worker),
            max(end - start, 1e-4),
            left=start - t0,
            height=0.8,
            color=colour[label],
            edgecolor=edge,
            linewidth=width,
        )
    ax.set_yticks(range(len(workers)), workers)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the first quantum started")
    ax.set_title(
        f"{len(bars)} quanta on {len(workers)} workers, span {max(b[2] for b in bars) - t0:.2f}s"
    )
    handles = [Patch(color=colour[label], label=label) for label in labels]
    handles += [
        Patch(facecolor="white", edgecolor=e, linewidth=w, label=s.value)
        for s, (e, w) in _EDGE.items()
        if w
    ]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    fig.tight_layout()
    if out.suffix == ".html":
        svg = io.StringIO()
        fig.savefig(svg, format="svg")
        out.write_text(
            f"<!doctype html><meta charset='utf-8'><title>zmpexec timeline</title>"
            f"<body>{svg.getvalue()}</body>"
        )
    else:
        fig.savefig(out, dpi=110)
    plt.close(fig)
