"""``zmpexec lsst run``: execute a quantum graph written by ``pipetask qgraph`` against a real
LSST Butler, on zmpexec's workers, and write the same summary JSON as ``pipetask run
--summary``. Imported only when that command is used (it needs ``pip install -e '.[lsst]'``).
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import time
from pathlib import Path
from typing import Any

import lsst.utils.timer
from lsst.ctrl.mpexec.cli.butler_factory import ButlerFactory
from lsst.daf.butler import Butler
from lsst.daf.butler.cli.cliLog import CliLog
from lsst.daf.butler.registry import ConflictingDefinitionError
from lsst.pipe.base import TaskFactory
from lsst.pipe.base.execution_graph_fixup import ExecutionGraphFixup
from lsst.pipe.base.mp_graph_executor import MPGraphExecutorError
from lsst.pipe.base.quantum_graph import PredictedQuantumGraph, PredictedQuantumGraphComponents
from lsst.pipe.base.script.transfer_from_graph import transfer_from_graph
from lsst.pipe.base.single_quantum_executor import SingleQuantumExecutor
from lsst.utils import doImportType
from lsst.utils.threads import disable_implicit_threading

from broker.lsst import (
    GRAPH_FILE,
    REPORT_FILE,
    MPGraphExecutor,
    fixed_up,
    read_schedule,
    write_provenance,
)
from common.exits import ExitCode
from scripts.cli.lsst_options import collections_given
from scripts.cli.views import ProgressDisplay

__all__ = ["cmd_lsst_run"]

logger = logging.getLogger("zmpexec")


def cmd_lsst_run(
    args: argparse.Namespace, stop_on_signals: object, options: dict[str, Any]
) -> ExitCode:
    """OK, or QUANTA_FAILED; bad input raises (the caller maps it to BAD_INPUT). The steps
    of ``pipetask run`` (``run-qbb`` with ``--qbb``), with zmpexec's executor."""
    if not args.qgraph.exists():
        raise FileNotFoundError(f"no quantum graph file {args.qgraph}")
    if args.resume:  # (zmpexec's word for pipetask's)
        args.skip_existing = args.clobber_outputs = True
        args.extend_run = collections_given(args)
    if not args.enable_implicit_threading:
        disable_implicit_threading()  # (inherited by the workers)
    log_levels = _init_logging(args)
    graph_file, run_dir = _graph_file_and_run_dir(args)
    init = _read_init(graph_file)
    if args.qgraph_id is not None:
        logger.warning("--qgraph-id: a .qg graph has no id to check (as pipetask)")
    butler, skip_existing_in, clobber = _write_butler(args, init)
    output_run = butler.run
    assert output_run is not None  # (a write butler has one)
    _write_init_outputs(args, init, butler)
    if args.init_only:
        print(f"init-outputs written to run {output_run!r}; --init-only: no quanta run")
        return ExitCode.OK
    quantum_executor = (
        None
        if args.qbb
        else SingleQuantumExecutor(
            butler=butler,
            task_factory=TaskFactory(),
            skip_existing_in=skip_existing_in,
            clobber_outputs=clobber,
            enable_lsst_debug=args.debug,
            raise_on_partial_outputs=args.raise_on_partial_outputs,
        )
    )
    schedule, summary = read_schedule(graph_file, only=args.qgraph_node_id)
    if args.graph_fixup is not None:
        full = PredictedQuantumGraph.read_execution_quanta(str(graph_file))
        schedule = fixed_up(schedule, full, _graph_fixup(args.graph_fixup))
    display = ProgressDisplay()
    executor = MPGraphExecutor(
        num_proc=args.jobs,
        timeout=args.timeout,
        quantum_executor=quantum_executor,
        start_method=args.start_method,
        fail_fast=args.fail_fast,
        pdb=args.pdb,
        run_dir=run_dir,
        progress=display.update,
        progress_interval_s=display.interval_s,
        qbb_repo=str(args.butler) if args.qbb else None,
        qbb_options={
            "raise_on_partial_outputs": args.raise_on_partial_outputs,
            "assume_no_existing_outputs": args.no_existing_outputs,
            "enable_lsst_debug": args.debug,
        },
        log_levels=log_levels,
        **options,  # the engine, resources, retries
    )
    received = stop_on_signals(executor)  # type: ignore[operator]
    print(
        f"running {len(schedule)} quanta from {args.qgraph} into run {output_run!r} of "
        f"{args.butler} with {args.jobs} worker(s)",
        file=sys.stderr,
    )
    t0 = time.monotonic()
    failed = False
    with display, lsst.utils.timer.profile(args.profile, logger):
        try:
            executor.execute_file(graph_file, schedule, summary, run_dir)
        except MPGraphExecutorError as e:
            failed = True
            logger.error("%s", e)
        finally:
            if args.qbb:  # register what the quanta wrote, finished or not
                with _Step() as step:
                    n = transfer_from_graph(
                        str(args.qgraph), str(args.butler), True, False, True, False, ()
                    )
                print(f"registered {n} output datasets {step}", file=sys.stderr)
            if args.provenance is not None:
                try:
                    with _Step() as step:
                        attempted = executor.attempted()
                        n = write_provenance(args.provenance, graph_file, butler, attempted)
                    print(f"provenance of {n} quanta: {args.provenance} {step}", file=sys.stderr)
                except Exception as e:  # (the run's outcome is still reported)
                    failed = True
                    logger.error("no provenance graph written: %s: %s", type(e).__name__, e)
    report = executor.getReport()
    if args.summary is not None:
        args.summary.write_text(report.model_dump_json(exclude_none=True, indent=2))
    if executor.zmpexec_report is not None:  # (ours: causes, logs, resources, caveats)
        ours = run_dir / REPORT_FILE
        with ours.open("w") as stream:
            executor.zmpexec_report.write_json(stream)
        print(f"triage: zmpexec report {ours} [--resources] [--json]", file=sys.stderr)
    print(f"done in {time.monotonic() - t0:.2f}s: {report.status.value}", file=sys.stderr)
    if received:
        return ExitCode.for_signal(received[0])
    return ExitCode.QUANTA_FAILED if failed else ExitCode.OK


class _Step:
    """How long a step took and how far it raised this process's peak memory."""

    def __enter__(self) -> _Step:
        self._t0 = time.monotonic()
        self._rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.monotonic() - self._t0
        self.grew_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self._rss0) / 1024

    def __str__(self) -> str:
        return f"({self.seconds:.1f}s, peak memory +{self.grew_mb:.0f} MB)"


def _init_logging(args: argparse.Namespace) -> list[tuple[str | None, str]]:
    """pipetask's ``--log-level`` (LEVEL or LOGGER=LEVEL), ``--long-log``, ``--log-file`` for
    this process; the levels, which the processes running tasks set too (and so the logs
    LSST captures into the butler)."""
    levels: list[tuple[str | None, str]] = []
    for item in args.log_level:
        component, sep, level = item.rpartition("=")
        if level.upper() not in logging.getLevelNamesMapping():
            raise ValueError(f"--log-level {item!r}: not a level (DEBUG, INFO, ...)")
        levels.append((component if sep else None, level.upper()))
    if levels or args.long_log or args.log_file:
        CliLog.initLog(longlog=args.long_log, log_file=tuple(args.log_file))
        CliLog.setLogLevels(levels)
    return levels


def _read_init(graph_file: Path) -> PredictedQuantumGraph:
    """The graph's header and init quanta (not the quanta: the broker reads only the thin
    graph)."""
    with PredictedQuantumGraph.open(str(graph_file)) as reader:
        reader.read_init_quanta()
        return reader.finish()


def _write_butler(
    args: argparse.Namespace, init: PredictedQuantumGraph
) -> tuple[Butler, tuple[str, ...], bool]:
    """A writeable butler on the output run, the collections to skip quanta whose outputs
    exist in, and whether to clobber a failed quantum's earlier outputs. With any of
    pipetask's collection options, pipetask's rules (its ``ButlerFactory``: the output run
    must be the graph's; ``-o`` makes or extends the CHAINED collection; an existing run
    needs ``--extend-run``, which implies ``--skip-existing``; ``--clobber-outputs`` only
    with ``--extend-run``). Without, the graph's output run is written to, made if it is
    not there."""
    graph_run = init.header.output_run
    if args.output_run is not None and args.output_run != graph_run:
        raise ValueError(
            f"Output run defined on command line ({args.output_run}) has to be identical to "
            f"graph metadata ({graph_run}). To update graph metadata run `pipetask "
            "update-graph-run` command."
        )
    skip_existing, clobber = args.skip_existing, args.clobber_outputs
    if collections_given(args) and not args.qbb:
        if args.extend_run:
            skip_existing = True
        else:
            clobber = False
        butler = ButlerFactory.make_write_butler(
            str(args.butler),
            init.pipeline_graph,
            output=args.output,
            output_run=graph_run,
            inputs=args.input or [],
            extend_run=args.extend_run,
            rebase=args.rebase,
            replace_run=args.replace_run,
            prune_replaced=args.prune_replaced,
        )
    else:  # (with --qbb the graph's collections: main refuses collection options there)
        butler = Butler.from_config(str(args.butler), run=graph_run, writeable=True)
    skip_in = tuple(args.skip_existing_in or ())
    if skip_existing:
        skip_in += (graph_run,)
    return butler, skip_in, clobber


def _write_init_outputs(
    args: argparse.Namespace, init: PredictedQuantumGraph, butler: Butler
) -> None:
    """What pipetask does before running quanta: dataset types registered if asked,
    init-outputs, configs and package versions written (unless skipped)."""
    if args.register_dataset_types:
        init.pipeline_graph.register_dataset_types(butler, include_packages=not args.no_versions)
    if args.skip_init_writes:
        return
    compare = args.extend_run or not collections_given(args)
    try:
        init.write_init_outputs(butler, skip_existing=compare)
        init.write_configs(butler, compare_existing=compare)
        if not args.no_versions:
            init.write_packages(butler, compare_existing=compare)
    except ConflictingDefinitionError as e:
        raise ValueError(
            f"run {butler.run!r} of {args.butler} already holds outputs that differ from "
            f"this graph's (a different graph was run into it?): {e}"
        ) from e


def _graph_fixup(name: str) -> Any:
    """pipetask's ``--graph-fixup``: an ``ExecutionGraphFixup`` made by the class or factory
    ``name``."""
    try:
        factory = doImportType(name)
    except Exception as e:
        raise ValueError(f"--graph-fixup {name}: cannot import it ({e})") from e
    try:
        fixup = factory()
    except Exception as e:
        raise ValueError(f"--graph-fixup {name}: cannot make one ({e})") from e
    if not isinstance(fixup, ExecutionGraphFixup):
        raise ValueError(f"--graph-fixup {name}: not an ExecutionGraphFixup")
    return fixup


def _graph_file_and_run_dir(args: argparse.Namespace) -> tuple[Path, Path]:
    """The ``.qg`` file the run reads (an old ``.qgraph`` file, which cannot be read in
    parts, is converted once into the run directory) and the run directory (default:
    ``zmpexec-runs/OUTPUT_RUN``)."""

    def run_dir_for(output_run: str) -> Path:
        run_dir: Path = args.run_dir or Path("zmpexec-runs") / output_run.replace("/", "_")
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir

    if args.qgraph.suffix == ".qg":
        with PredictedQuantumGraph.open(str(args.qgraph)) as reader:
            return args.qgraph, run_dir_for(reader.header.output_run)
    components = PredictedQuantumGraphComponents.read_execution_quanta(str(args.qgraph))
    run_dir = run_dir_for(components.header.output_run)
    components.write(str(run_dir / GRAPH_FILE))
    return run_dir / GRAPH_FILE, run_dir
