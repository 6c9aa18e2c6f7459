"""``zmpexec``: thin entry points. Parse args, build config, call one object, map the outcome
to an exit code. The only place logging is configured.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console

from broker import MPGraphExecutor
from broker.control import endpoint_of, request_cancel, request_status
from common.butler import Butler
from common.errors import ConfigError, MPGraphExecutorError, ZmpexecError
from common.exits import ExitCode
from common.graph import QuantumGraph
from common.graphfile import SUFFIXES
from common.summary import read_summary
from common.usage import bps_block, label_usage, usage_table
from scripts.cli.attach import run_workers
from scripts.cli.lsst_options import add_pipetask_options, collections_given
from scripts.cli.views import ProgressDisplay, render_report, render_status, render_triage_json
from worker.executor import TaskQuantumExecutor
from worker.runner import log_path_for

__all__ = ["ExitCode", "main"]

logger = logging.getLogger("zmpexec")


class UsageError(Exception):
    """Bad input discovered by a command: one line on stderr, exit 2."""


# ---------------------------------------------------------------------- arguments
def _add_run_options(p: argparse.ArgumentParser, *, jobs_default: int) -> None:
    p.add_argument("graph", type=Path, help="graph file (.yaml or .json)")
    p.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=jobs_default,
        help="local worker processes" + (" (1: in-process)" if jobs_default else ""),
    )
    p.add_argument("--timeout", type=float, default=None, help="per-quantum timeout, seconds")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failure")
    p.add_argument("--repo", type=Path, default=Path("zmpexec-repo"), help="data repository")
    p.add_argument("--run", default="main", help="run name; its directory is REPO/runs/RUN")
    p.add_argument("--summary", type=Path, default=None, help="write the JSON report here")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run: skip quanta whose outputs an earlier run stored",
    )
    p.add_argument("--start-method", choices=["spawn", "forkserver", "fork"], default="spawn")
    p.add_argument("--heartbeat", type=float, default=1.0, help="heartbeat interval, seconds")
    p.add_argument("--liveness", type=int, default=10, help="missed heartbeats before lost")
    p.add_argument(
        "--startup-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="a worker not registered, or without a ready executor, this long is replaced",
    )
    p.add_argument(
        "--grace",
        type=float,
        default=2.0,
        help="seconds running quanta get to finish after SIGINT/SIGTERM or cancel",
    )
    _add_executor_options(p)
    _add_resource_options(p)


def _add_executor_options(p: argparse.ArgumentParser) -> None:
    """Retries and executor recycling (``run``, ``broker``, ``lsst run``)."""
    p.add_argument(
        "--retries",
        type=int,
        default=None,
        help="attempts after the first for a quantum lost with its worker, a memory failure "
        "(with --memory-multiplier) or a failure --retry-unless-exit allows (default 1)",
    )
    p.add_argument(
        "--max-quanta-per-executor",
        type=int,
        default=None,
        metavar="N",
        help="replace an executor process after N quanta (1: a fresh one each)",
    )
    p.add_argument(
        "--max-rss",
        type=int,
        default=None,
        metavar="MB",
        help="replace an executor process whose memory passes MB",
    )


def _add_resource_options(p: argparse.ArgumentParser, *, pipetask: bool = False) -> None:
    """``pipetask``: with pipetask's ``-n`` for ``--cores-per-quantum``."""
    r = p.add_argument_group(
        "resources (sizes: a number of MB, or with a unit: 512MB, 2GB, 1.5GiB)"
    )
    r.add_argument(
        "--memory",
        metavar="SIZE",
        help="memory the running quanta may use at once (default: what the host has "
        "available at start, less max(1 GiB, 5%% of its memory))",
    )
    r.add_argument(
        "--cpus",
        type=int,
        metavar="N",
        help="cores the running quanta may use at once (default: the larger of -j and the "
        "CPUs this process may use)",
    )
    r.add_argument(
        "--resource",
        action="append",
        default=[],
        metavar="NAME=AMOUNT",
        help="a custom resource and how much of it there is (repeatable)",
    )
    r.add_argument("--memory-per-quantum", metavar="SIZE", help="for quanta declaring none")
    r.add_argument(
        *(["-n"] if pipetask else []),
        "--cores-per-quantum",
        type=int,
        metavar="N",
        help="for quanta declaring none",
    )
    r.add_argument(
        "--bps-config",
        type=Path,
        metavar="FILE",
        help="a BPS submit YAML: requestMemory, requestCpus (per label under pipetask:), "
        "memoryMultiplier, requestMemoryMax, numberOfRetries, retryUnlessExit",
    )
    r.add_argument(
        "--memory-enforce",
        choices=["kill", "warn", "off"],
        default=None,
        help="a quantum past its declared memory is killed (default), warned about, or left",
    )
    r.add_argument(
        "--memory-multiplier",
        type=float,
        metavar="F",
        help="retry a memory failure with its request times F (within --retries)",
    )
    r.add_argument("--memory-max", metavar="SIZE", help="the largest request a retry may make")
    r.add_argument(
        "--retry-unless-exit",
        metavar="CODES",
        help="retry failures (within --retries) unless their exit code is one of these "
        "(comma-separated)",
    )
    r.add_argument(
        "--max-failures",
        type=int,
        metavar="N",
        help="after N quanta failed for good start nothing new; exit 1 once the rest ends",
    )


def _resource_options(args: argparse.Namespace) -> dict[str, Any]:
    """The resource options ``MPGraphExecutor`` takes, from the command line."""
    custom: dict[str, float] = {}
    for item in args.resource:
        name, sep, amount = item.partition("=")
        try:
            value = float(amount)
        except ValueError:
            value = math.nan
        if not sep or not name or not math.isfinite(value):
            raise UsageError(f"--resource {item!r}: expected NAME=AMOUNT, e.g. db=4")
        custom[name] = value
    codes = None
    if args.retry_unless_exit is not None:
        try:
            codes = frozenset(int(c) for c in args.retry_unless_exit.split(",") if c.strip())
        except ValueError:
            raise UsageError(
                f"--retry-unless-exit {args.retry_unless_exit!r}: expected exit codes, e.g. 21,2"
            ) from None
    options = {
        "memory": args.memory,
        "cpus": args.cpus,
        "resources": custom or None,
        "memory_per_quantum": args.memory_per_quantum,
        "cores_per_quantum": args.cores_per_quantum,
        "bps_config": args.bps_config,
        "memory_enforce": args.memory_enforce,
        "memory_multiplier": args.memory_multiplier,
        "memory_max": args.memory_max,
        "retry_unless_exit": codes,
        "max_failures": args.max_failures,
        "retries": getattr(args, "retries", None),
    }
    return {k: v for k, v in options.items() if v is not None}


def _add_dask_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--engine",
        choices=["local", "dask"],
        default="local",
        help="local: zmpexec's own workers; dask: a Dask distributed cluster (pip install "
        "-e '.[dask]'): --scheduler or --scheduler-file, else a local cluster of -j workers",
    )
    p.add_argument("--scheduler", default=None, metavar="ADDRESS", help="Dask scheduler")
    p.add_argument("--scheduler-file", default=None, metavar="FILE", help="Dask scheduler file")
    tls = p.add_argument_group("TLS to a Dask scheduler (as dask scheduler/worker take them)")
    tls.add_argument("--tls-ca-file", default=None, metavar="PEM", help="certificate authority")
    tls.add_argument("--tls-cert", default=None, metavar="PEM", help="this client's certificate")
    tls.add_argument("--tls-key", default=None, metavar="PEM", help="its key, if apart")


def _dask_options(args: argparse.Namespace) -> dict[str, Any]:
    """The executor options of ``--engine`` and its scheduler."""
    tls = (args.tls_ca_file, args.tls_cert, args.tls_key)
    if args.engine != "dask":
        if args.scheduler or args.scheduler_file or any(tls):
            raise UsageError("--scheduler, --scheduler-file and --tls-* need --engine dask")
        return {}
    if args.scheduler and args.scheduler_file:
        raise UsageError("give --scheduler or --scheduler-file, not both")
    security = None
    if any(tls):
        if not (args.tls_ca_file and args.tls_cert):
            raise UsageError("TLS needs --tls-ca-file and --tls-cert (and --tls-key)")
        if not (args.scheduler or args.scheduler_file):
            raise UsageError("--tls-* apply to --scheduler or --scheduler-file")
        try:
            from broker.drivers.dask_cluster import tls_security
        except ImportError as e:
            raise ConfigError(f"the dask engine needs pip install -e '.[dask]' ({e})") from e
        security = tls_security(args.tls_ca_file, args.tls_cert, args.tls_key)
    return {
        "engine": "dask",
        "dask_scheduler": args.scheduler,
        "dask_scheduler_file": args.scheduler_file,
        "dask_security": security,
    }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zmpexec", description=__doc__.split("\n")[0])
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    sub = p.add_subparsers(dest="command", required=True)

    run_cmd = sub.add_parser("run", help="run a graph with N local workers (or on Dask)")
    _add_run_options(run_cmd, jobs_default=1)
    _add_dask_options(run_cmd)
    broker = sub.add_parser("broker", help="serve a graph to local and attached workers")
    _add_run_options(broker, jobs_default=0)
    broker.add_argument(
        "--endpoint", required=True, help="ipc://PATH or tcp://HOST:PORT (tcp uses CURVE keys)"
    )

    _add_worker_parser(sub)
    _add_control_parsers(sub)

    val = sub.add_parser("validate", help="check a graph without running it")
    val.add_argument("graph", type=Path)
    val.add_argument("--repo", type=Path, default=None, help="repository holding external inputs")
    val.add_argument("--run", default="main")

    conv = sub.add_parser(
        "convert",
        help="write a graph in another form: .zmpg (compact binary, loads fastest), .json, .yaml",
    )
    conv.add_argument("graph", type=Path)
    conv.add_argument("out", type=Path)

    rep = sub.add_parser("report", help="summarize a JSON report written by --summary")
    rep.add_argument("file", type=Path)
    rep.add_argument("--all", action="store_true", help="list every quantum, not only problems")
    rep.add_argument(
        "--json",
        action="store_true",
        help="the triage as JSON (counts per task, failure and skip groups) for scripts",
    )
    rep.add_argument(
        "--timeline",
        type=Path,
        default=None,
        metavar="OUT.png|OUT.html",
        help="draw quanta per worker over time",
    )
    rep.add_argument(
        "--resources",
        action="store_true",
        help="per task label: quanta, wall and CPU time, own peak memory p50/p95/max, the "
        "request and how much of it was used",
    )
    rep.add_argument(
        "--bps-config",
        type=Path,
        default=None,
        metavar="OUT.yaml",
        help="write a BPS pipetask: block (requestMemory, requestCpus per label) from the "
        "measured peaks",
    )

    _add_lsst_parser(sub)

    logs = sub.add_parser("logs", help="print a quantum's captured log")
    logs.add_argument("quantum")
    logs.add_argument("--repo", type=Path, default=Path("zmpexec-repo"))
    logs.add_argument("--run", default="main")
    return p


def _add_worker_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``zmpexec worker``: attach workers to a running broker."""
    worker = sub.add_parser("worker", help="attach workers to a running broker")
    where = worker.add_mutually_exclusive_group(required=True)
    where.add_argument("--connect", metavar="ENDPOINT", help="the broker's endpoint")
    where.add_argument("--run-dir", type=Path, help="the broker's run directory")
    worker.add_argument(
        "--keys",
        type=Path,
        default=None,
        help="CURVE key directory for tcp (default: RUN_DIR/curve)",
    )
    worker.add_argument("-j", "--jobs", type=int, default=1, help="workers to attach")
    worker.add_argument(
        "--wait", type=float, default=60.0, help="seconds to keep trying while no broker answers"
    )


def _add_control_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``zmpexec status`` and ``cancel``: ask a running broker."""
    for name, text in (
        ("status", "show a running broker's progress"),
        ("cancel", "stop a running broker"),
    ):
        c = sub.add_parser(name, help=text)
        c.add_argument(
            "target",
            nargs="?",
            default="zmpexec-repo/runs/main",
            help="run directory or endpoint (default: zmpexec-repo/runs/main)",
        )
        c.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for answer")
    sub.choices["status"].add_argument("--json", action="store_true", help="machine-readable")
    sub.choices["cancel"].add_argument(
        "--abort", action="store_true", help="kill running quanta instead of letting them finish"
    )


def _add_lsst_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``zmpexec lsst run`` (the LSST stack itself is imported only when it runs)."""
    lsst = sub.add_parser("lsst", help="run LSST quantum graphs (needs the [lsst] extra)")
    lsst_sub = lsst.add_subparsers(dest="lsst_command", required=True)
    run = lsst_sub.add_parser("run", help="execute a pipetask quantum graph file")
    run.add_argument(
        "qgraph", type=Path, nargs="?", help="graph file from pipetask qgraph (.qg/.qgraph)"
    )
    run.add_argument(
        "--butler", "-b", "--butler-config", type=Path, required=True, help="butler repository"
    )
    run.add_argument("-j", "--jobs", "--processes", type=int, default=1, help="worker processes")
    run.add_argument("--timeout", type=float, default=None, help="per-quantum timeout, seconds")
    run.add_argument("--fail-fast", action="store_true", help="stop at the first failure")
    run.add_argument("--summary", type=Path, default=None, help="write LSST's Report JSON here")
    run.add_argument(
        "--resume",
        action="store_true",
        help="skip quanta whose outputs exist (LSST's skip-existing, clobbering partial outputs)",
    )
    run.add_argument(
        "--qbb",
        action="store_true",
        help="quantum-backed butlers, as pipetask run-qbb: workers never touch the "
        "registry; outputs are registered at the end (needed with --engine dask)",
    )
    _add_dask_options(run)
    _add_executor_options(run)
    _add_resource_options(run, pipetask=True)
    add_pipetask_options(run)
    run.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="zmpexec's run directory (default: zmpexec-runs/OUTPUT_RUN)",
    )


def _check_pipetask_options(args: argparse.Namespace) -> None:
    """pipetask's option combinations that cannot work, refused before anything runs."""
    if args.replace_run and (args.extend_run or args.resume):
        raise UsageError("--replace-run cannot go with --extend-run (or --resume)")
    if args.prune_replaced and not args.replace_run:
        raise UsageError("--prune-replaced needs --replace-run")
    if args.qbb and collections_given(args):
        raise UsageError(
            "with --qbb the graph's collections are used (pipetask run-qbb takes no "
            "-i/-o/--extend-run/--replace-run); its output chain is updated at the end"
        )
    if args.qbb:
        given = [
            flag
            for flag, value in (
                ("--skip-existing", args.skip_existing),
                ("--skip-existing-in", args.skip_existing_in),
                ("--clobber-outputs", args.clobber_outputs),
            )
            if value
        ]
        if given:
            raise UsageError(
                f"{given[0]} is not for --qbb: quanta there skip what exists and clobber "
                "partial outputs always (as pipetask run-qbb)"
            )
    elif args.no_existing_outputs:
        raise UsageError("--no-existing-outputs is for --qbb (pipetask run-qbb's option)")


def cmd_lsst(args: argparse.Namespace) -> ExitCode:
    try:
        from scripts.cli.lsst_run import cmd_lsst_run
    except ImportError as e:
        raise UsageError(f"the LSST stack is not installed ({e}): pip install -e '.[lsst]'") from e
    if args.refused is not None:
        raise UsageError(
            f"{args.refused} builds a quantum graph: build it with `pipetask qgraph ... "
            "--save-qgraph FILE`, then run FILE here"
        )
    if (args.qgraph is None) == (args.qgraph_option is None):
        raise UsageError("give the quantum graph file once: as QGRAPH or -g/--qgraph")
    _check_pipetask_options(args)
    args.qgraph = args.qgraph or Path(args.qgraph_option)
    options = _dask_options(args)
    if options and not args.qbb:
        raise UsageError("LSST on Dask needs --qbb: workers on other hosts write no registry")
    options.update(_resource_options(args))
    options.update(_executor_options(args))
    try:
        return cmd_lsst_run(args, _stop_on_signals, options)
    except (OSError, ValueError, LookupError) as e:
        raise UsageError(f"{type(e).__name__}: {e}") from e


# ---------------------------------------------------------------------- commands
_BIG_GRAPH_BYTES = 1_000_000  # files at least this big get progress lines while they load


def _load_graph(path: Path, butler: Butler | None, *, check: bool = True) -> QuantumGraph:
    """Read and validate a graph file, saying what happens when it takes a while. Without
    ``check`` only what reading proves (shape, ids, datasets, no cycle)."""
    try:
        size = path.stat().st_size
    except OSError:
        size = 0  # load() names the problem
    big = size >= _BIG_GRAPH_BYTES

    def say(text: str) -> None:
        if big:
            print(text, file=sys.stderr)

    t0 = time.monotonic()
    say(f"reading {path} ({size / 1e6:,.1f} MB)...")
    graph = QuantumGraph.load(path)
    t1 = time.monotonic()
    say(f"read {len(graph):,} quanta in {t1 - t0:.1f}s" + ("; validating..." if check else ""))
    if check:
        graph.validate(butler)
        say(f"valid ({time.monotonic() - t1:.1f}s)")
    return graph


def cmd_validate(args: argparse.Namespace) -> ExitCode:
    butler = Butler(args.repo, args.run) if args.repo else None
    graph = _load_graph(args.graph, butler)
    labels = ", ".join(f"{k}: {v}" for k, v in sorted(graph.task_counts().items()))
    print(f"{args.graph}: valid, {len(graph)} quanta, {graph.edge_count} edges ({labels})")
    return ExitCode.OK


def cmd_convert(args: argparse.Namespace) -> ExitCode:
    if args.out.suffix not in SUFFIXES:
        raise UsageError(f"{args.out}: unknown suffix (use {', '.join(SUFFIXES)})")
    graph = _load_graph(args.graph, None, check=False)
    t0 = time.monotonic()
    graph.save(args.out)
    size = args.out.stat().st_size
    print(
        f"{args.out}: {len(graph):,} quanta, {graph.edge_count:,} edges, "
        f"{size / 1e6:,.1f} MB, written in {time.monotonic() - t0:.1f}s"
    )
    return ExitCode.OK


def _executor_for(args: argparse.Namespace, display: ProgressDisplay) -> MPGraphExecutor:
    options: dict[str, Any] = {}
    if args.command == "broker":
        options = {"endpoint": args.endpoint, "local_workers": args.jobs}
    elif args.jobs < 1:
        raise UsageError(f"-j must be at least 1, got {args.jobs}")
    else:
        options = _dask_options(args)
    return MPGraphExecutor(
        max(1, args.jobs),
        args.timeout,
        TaskQuantumExecutor(),
        startMethod=args.start_method,
        failFast=args.fail_fast,
        run_dir=args.repo / "runs" / args.run,
        heartbeat_interval_s=args.heartbeat,
        liveness=args.liveness,
        startup_timeout_s=args.startup_timeout,
        progress=display.update,
        progress_interval_s=display.interval_s,
        shutdown_grace_s=args.grace,
        resume=args.resume,
        **options,
        **_resource_options(args),
        **_executor_options(args),
    )


def _executor_options(args: argparse.Namespace) -> dict[str, Any]:
    """What ``_add_executor_options`` read, as ``MPGraphExecutor`` takes it (``retries``
    goes with the resource options)."""
    return {"max_quanta_per_executor": args.max_quanta_per_executor, "max_rss_mb": args.max_rss}


def cmd_run(args: argparse.Namespace) -> ExitCode:
    """``run`` and ``broker``: execute the graph, show progress, write the summary."""
    butler = Butler(args.repo, args.run)
    graph = _load_graph(args.graph, butler)  # bad input fails here, before anything starts
    display = ProgressDisplay()
    executor = _executor_for(args, display)
    received = _stop_on_signals(executor)
    run_dir = args.repo / "runs" / args.run
    where = f" at {args.endpoint}" if args.command == "broker" else ""
    workers = f"{args.jobs} local worker(s)"
    if getattr(args, "engine", "local") == "dask":
        cluster = args.scheduler or args.scheduler_file
        workers = f"Dask at {cluster}" if cluster else f"a local Dask cluster of {args.jobs}"
    print(
        f"running {len(graph)} quanta from {args.graph} with {workers}{where}; "
        f"run directory {run_dir}",
        file=sys.stderr,
    )
    if args.command == "broker":
        print(f"attach workers with: zmpexec worker --run-dir {run_dir}", file=sys.stderr)
    t0 = time.monotonic()
    failed = False
    with display:
        try:
            executor.execute(graph, butler)
        except MPGraphExecutorError as e:
            failed = True
            logger.error("%s", e)
    report = executor.getReport()
    if args.summary is not None:
        with args.summary.open("w") as summary:
            report.write_json(summary)
    counts = report.counts()
    print(
        f"done in {time.monotonic() - t0:.2f}s: "
        + ", ".join(f"{n} {s.value}" for s, n in counts.items() if n)
        + f"; outputs in {args.repo} (run {args.run!r})",
        file=sys.stderr,
    )
    if received:
        return ExitCode.for_signal(received[0])
    return ExitCode.QUANTA_FAILED if failed else ExitCode.OK


def _stop_on_signals(executor: Any) -> list[int]:
    """SIGINT/SIGTERM drain the run (running quanta get the grace); a second Ctrl-C forces."""
    received: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        received.append(signum)
        executor.request_stop(f"{signal.Signals(signum).name} received")

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return received


def cmd_worker(args: argparse.Namespace) -> ExitCode:
    endpoint = args.connect or endpoint_of(str(args.run_dir))
    keys = args.keys or (args.run_dir / "curve" if args.run_dir else None)
    if endpoint.startswith("tcp://") and keys is None:
        raise UsageError("a tcp endpoint needs CURVE keys: give --run-dir or --keys")
    return run_workers(
        endpoint, args.jobs, keys if endpoint.startswith("tcp://") else None, args.wait
    )


def cmd_status(args: argparse.Namespace) -> ExitCode:
    status = request_status(endpoint_of(args.target), args.timeout)
    if args.json:
        print(json.dumps(status.to_dict(), indent=2))
    else:
        render_status(status, Console())
    return ExitCode.OK


def cmd_cancel(args: argparse.Namespace) -> ExitCode:
    status = request_cancel(endpoint_of(args.target), abort=args.abort, timeout_s=args.timeout)
    how = "aborting" if args.abort else "draining"
    print(
        f"{how}: {status.count('running')} running, "
        f"{status.total - status.finished} unfinished of {status.total}"
    )
    return ExitCode.OK


def cmd_report(args: argparse.Namespace) -> ExitCode:
    try:
        report = read_summary(args.file)
        if args.resources or args.bps_config is not None:
            usage = label_usage(report.entries())
            shown = usage_table(usage) if args.resources else ""
            if args.bps_config is not None:
                args.bps_config.write_text(bps_block(usage, str(args.file)))
        elif args.json:
            shown = render_triage_json(report)
        else:
            shown = render_report(report, every_quantum=args.all)
    except OSError as e:
        raise UsageError(f"cannot read {args.file}: {e.strerror}") from e
    except ValueError as e:
        raise UsageError(f"{args.file}: {e}") from e
    if shown:
        print(shown)
    if args.bps_config is not None:
        print(f"BPS config: {args.bps_config}", file=sys.stderr)
    if args.timeline is not None:
        from scripts.cli.timeline import draw_timeline

        draw_timeline(report, args.timeline)
        print(f"timeline: {args.timeline}")
    return ExitCode.OK


def cmd_logs(args: argparse.Namespace) -> ExitCode:
    log_dir = args.repo / "runs" / args.run / "logs"
    candidates = [log_path_for(log_dir, args.quantum, attempt) for attempt in range(1, 100)]
    found = [p for p in candidates if p.exists()]
    if not found:
        raise UsageError(
            f"no log for quantum {args.quantum!r} in {log_dir} (it may have written nothing)"
        )
    for path in found:
        if len(found) > 1:
            print(f"==> {path} <==")
        sys.stdout.write(path.read_text(errors="replace"))
    return ExitCode.OK


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    commands = {
        "run": cmd_run,
        "broker": cmd_run,
        "worker": cmd_worker,
        "status": cmd_status,
        "cancel": cmd_cancel,
        "validate": cmd_validate,
        "convert": cmd_convert,
        "report": cmd_report,
        "logs": cmd_logs,
        "lsst": cmd_lsst,
    }
    try:
        return int(commands[args.command](args))
    except (ZmpexecError, UsageError) as e:
        print(f"zmpexec: error: {' '.join(str(e).split())}", file=sys.stderr)
        return int(ExitCode.BAD_INPUT)
    except KeyboardInterrupt:
        print("zmpexec: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)


if __name__ == "__main__":
    sys.exit(main())
