"""``zmpexec``: thin entry points. Parse args, build config, call one object, map the outcome
to an exit code. The only place logging is configured.
"""

from __future__ import annotations

import argparse
import enum
import logging
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from types import FrameType

from broker import MPGraphExecutor
from broker.server import Progress
from common.butler import Butler
from common.errors import MPGraphExecutorError, ZmpexecError
from common.graph import QuantumGraph
from common.report import ExecutionStatus, Report
from worker.executor import TaskQuantumExecutor

__all__ = ["ExitCode", "main"]

logger = logging.getLogger("zmpexec")


class ExitCode(enum.IntEnum):
    OK = 0
    QUANTA_FAILED = 1
    BAD_INPUT = 2
    INTERRUPTED = 130  # SIGINT
    TERMINATED = 143  # SIGTERM


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zmpexec", description=__doc__.split("\n")[0])
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a graph with N local workers")
    run.add_argument("graph", type=Path, help="graph file (.yaml or .json)")
    run.add_argument("-j", "--jobs", type=int, default=1, help="worker processes (1: in-process)")
    run.add_argument("--timeout", type=float, default=None, help="per-quantum timeout, seconds")
    run.add_argument("--fail-fast", action="store_true", help="stop at the first failure")
    run.add_argument("--repo", type=Path, default=Path("zmpexec-repo"), help="data repository")
    run.add_argument("--run", default="main", help="run (collection) name in the repository")
    run.add_argument("--summary", type=Path, default=None, help="write the JSON report here")
    run.add_argument("--start-method", choices=["spawn", "forkserver", "fork"], default="spawn")
    run.add_argument("--retries", type=int, default=1, help="re-dispatches after a lost worker")
    run.add_argument("--heartbeat", type=float, default=1.0, help="heartbeat interval, seconds")
    run.add_argument("--liveness", type=int, default=10, help="missed heartbeats before lost")

    val = sub.add_parser("validate", help="check a graph without running it")
    val.add_argument("graph", type=Path)
    val.add_argument("--repo", type=Path, default=None, help="repository holding external inputs")
    val.add_argument("--run", default="main")

    rep = sub.add_parser("report", help="summarize a JSON report written by --summary")
    rep.add_argument("file", type=Path)
    return p


def _load_graph(path: Path) -> QuantumGraph:
    return QuantumGraph.load(path)


def cmd_validate(args: argparse.Namespace) -> ExitCode:
    graph = _load_graph(args.graph)
    butler = Butler(args.repo, args.run) if args.repo else None
    graph.validate(butler)
    labels = ", ".join(f"{k}: {v}" for k, v in sorted(graph.task_counts().items()))
    print(f"{args.graph}: valid, {len(graph)} quanta, "
          f"{graph.xgraph.number_of_edges()} edges ({labels})")  # fmt: skip
    return ExitCode.OK


def _print_progress(p: Progress) -> None:
    done = sum(p.counts.get(s, 0) for s in ("succeeded", "failed", "timed_out", "skipped"))
    parts = [f"{done}/{p.total} done", f"{p.counts.get('running', 0)} running"]
    bad = p.counts.get("failed", 0) + p.counts.get("timed_out", 0)
    if bad:
        parts.append(f"{bad} failed")
    if p.eta_s is not None:
        parts.append(f"eta {p.eta_s:.0f}s")
    print(f"[{p.elapsed_s:7.1f}s] " + ", ".join(parts) + f"; {p.workers} workers",
          file=sys.stderr, flush=True)  # fmt: skip


def cmd_run(args: argparse.Namespace) -> ExitCode:
    graph = _load_graph(args.graph)
    butler = Butler(args.repo, args.run)
    graph.validate(butler)  # bad input fails here, before anything starts
    run_dir = args.repo / "runs" / f"{args.run}-{time.strftime('%Y%m%dT%H%M%S')}"
    executor = MPGraphExecutor(
        args.jobs, args.timeout, TaskQuantumExecutor(), startMethod=args.start_method,
        failFast=args.fail_fast, run_dir=run_dir, retries=args.retries,
        heartbeat_interval_s=args.heartbeat, liveness=args.liveness, progress=_print_progress,
    )  # fmt: skip
    received: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if received and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C forces
        received.append(signum)
        executor.request_stop(f"{signal.Signals(signum).name} received")

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print(f"running {len(graph)} quanta from {args.graph} with {args.jobs} worker(s); "
          f"logs in {run_dir / 'logs'}", file=sys.stderr)  # fmt: skip
    t0 = time.monotonic()
    failed = False
    try:
        executor.execute(graph, butler)
    except MPGraphExecutorError as e:
        failed = True
        logger.error("%s", e)
    report = executor.getReport()
    if args.summary is not None:
        args.summary.write_text(report.to_json())
    counts = report.counts()
    print(f"done in {time.monotonic() - t0:.2f}s: "
          + ", ".join(f"{n} {s.value}" for s, n in counts.items() if n)
          + f"; outputs in {args.repo} (run {args.run!r})", file=sys.stderr)  # fmt: skip
    if received:
        return ExitCode.TERMINATED if received[0] == signal.SIGTERM else ExitCode.INTERRUPTED
    return ExitCode.QUANTA_FAILED if failed else ExitCode.OK


def render_report(report: Report) -> str:
    """Totals by status and label, then every problem with its cause and log."""
    lines = []
    counts = report.counts()
    lines.append(f"status: {report.status.value}; "
                 + ", ".join(f"{n} {s.value}" for s, n in counts.items() if n))  # fmt: skip
    by_label: dict[str, Counter[str]] = {}
    for r in report.quantaReports:
        by_label.setdefault(r.taskLabel, Counter())[r.status.value] += 1
    width = max((len(label) for label in by_label), default=5)
    lines.append(f"{'task':<{width}}  {'total':>6}  " + "  ".join(
        f"{s.value:>8}" for s in ExecutionStatus))  # fmt: skip
    for label, c in sorted(by_label.items()):
        lines.append(f"{label:<{width}}  {sum(c.values()):>6}  " + "  ".join(
            f"{c.get(s.value, 0):>8}" for s in ExecutionStatus))  # fmt: skip
    problems = [
        (r, report.quantaDetails.get(r.quantumId))
        for r in report.quantaReports
        if r.status in (ExecutionStatus.FAILURE, ExecutionStatus.TIMEOUT)
    ]
    if problems:
        lines.append("problems:")
    for r, d in problems:
        cause = (f"{r.exceptionInfo.className}: {r.exceptionInfo.message}" if r.exceptionInfo
                 else (d.message if d and d.message else "unknown"))  # fmt: skip
        if len(cause) > 200:
            cause = cause[:200] + "..."
        name = d.id if d else r.quantumId
        reason = d.reason.value if d and d.reason else r.status.value
        lines.append(f"  {name} [{r.taskLabel}] {reason}, exit {r.exitCode}: {cause}")
        if d and d.logPath:
            lines.append(f"    log: {d.logPath}")
    timed = [(d.endTime - d.startTime, d.id) for d in report.quantaDetails.values()
             if d.startTime is not None and d.endTime is not None]  # fmt: skip
    if timed:
        lines.append("slowest:")
        for seconds, qid in sorted(timed, reverse=True)[:5]:
            lines.append(f"  {seconds:8.3f}s  {qid}")
    return "\n".join(lines)


def cmd_report(args: argparse.Namespace) -> ExitCode:
    try:
        report = Report.from_json(args.file.read_text())
    except OSError as e:
        raise _UsageError(f"cannot read {args.file}: {e.strerror}") from e
    except ValueError as e:
        raise _UsageError(f"{args.file}: {e}") from e
    print(render_report(report))
    return ExitCode.OK


class _UsageError(Exception):
    """Bad input discovered by a command: one line on stderr, exit 2."""


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    commands = {"run": cmd_run, "validate": cmd_validate, "report": cmd_report}
    try:
        return int(commands[args.command](args))
    except (ZmpexecError, _UsageError) as e:
        print(f"zmpexec: error: {' '.join(str(e).split())}", file=sys.stderr)
        return int(ExitCode.BAD_INPUT)
    except KeyboardInterrupt:
        print("zmpexec: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)


if __name__ == "__main__":
    sys.exit(main())
