"""``zmpexec lsst run``: execute a quantum graph written by ``pipetask qgraph`` against a real
LSST Butler, on zmpexec's workers, and write the same summary JSON as ``pipetask run
--summary``. Imported only when that command is used (it needs ``pip install -e '.[lsst]'``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

from lsst.daf.butler import Butler
from lsst.daf.butler.registry import ConflictingDefinitionError
from lsst.pipe.base import TaskFactory
from lsst.pipe.base.mp_graph_executor import MPGraphExecutorError
from lsst.pipe.base.quantum_graph import PredictedQuantumGraph, PredictedQuantumGraphComponents
from lsst.pipe.base.script.transfer_from_graph import transfer_from_graph
from lsst.pipe.base.single_quantum_executor import SingleQuantumExecutor

from broker.lsst import GRAPH_FILE, REPORT_FILE, MPGraphExecutor, read_schedule
from common.exits import ExitCode
from scripts.cli.views import ProgressDisplay

__all__ = ["cmd_lsst_run"]

logger = logging.getLogger("zmpexec")


def cmd_lsst_run(
    args: argparse.Namespace, stop_on_signals: object, options: dict[str, Any]
) -> ExitCode:
    """OK, or QUANTA_FAILED; bad input raises (the caller maps it to BAD_INPUT)."""
    if not args.qgraph.exists():
        raise FileNotFoundError(f"no quantum graph file {args.qgraph}")
    graph_file, run_dir = _graph_file_and_run_dir(args)
    output_run, butler = _init_outputs_written(graph_file, args.butler)
    quantum_executor = (
        None
        if args.qbb
        else SingleQuantumExecutor(
            butler=butler,
            task_factory=TaskFactory(),
            skip_existing_in=[output_run] if args.resume else None,
            clobber_outputs=args.resume,
        )
    )
    schedule, summary = read_schedule(graph_file)
    display = ProgressDisplay()
    executor = MPGraphExecutor(
        num_proc=args.jobs,
        timeout=args.timeout,
        quantum_executor=quantum_executor,
        fail_fast=args.fail_fast,
        run_dir=run_dir,
        progress=display.update,
        progress_interval_s=display.interval_s,
        qbb_repo=str(args.butler) if args.qbb else None,
        **options,  # the engine
    )
    received = stop_on_signals(executor)  # type: ignore[operator]
    print(
        f"running {len(schedule)} quanta from {args.qgraph} into run {output_run!r} of "
        f"{args.butler} with {args.jobs} worker(s)",
        file=sys.stderr,
    )
    t0 = time.monotonic()
    failed = False
    with display:
        try:
            executor.execute_file(graph_file, schedule, summary, run_dir)
        except MPGraphExecutorError as e:
            failed = True
            logger.error("%s", e)
        finally:
            if args.qbb:  # register what the quanta wrote, finished or not
                n = transfer_from_graph(
                    str(args.qgraph), str(args.butler), True, False, False, False, ()
                )
                print(f"registered {n} output datasets", file=sys.stderr)
    report = executor.getReport()
    if args.summary is not None:
        args.summary.write_text(report.model_dump_json(indent=2))
    if executor.zmpexec_report is not None:  # (ours: causes, logs, resources, caveats)
        ours = run_dir / REPORT_FILE
        with ours.open("w") as stream:
            executor.zmpexec_report.write_json(stream)
        print(f"triage: zmpexec report {ours} [--resources] [--json]", file=sys.stderr)
    print(f"done in {time.monotonic() - t0:.2f}s: {report.status.value}", file=sys.stderr)
    if received:
        return ExitCode.for_signal(received[0])
    return ExitCode.QUANTA_FAILED if failed else ExitCode.OK


def _init_outputs_written(graph_file: Path, repo: Path) -> tuple[str, Butler]:
    """What pipetask does before running quanta (init-outputs, configs, package versions),
    done in the graph's output run of ``repo``: that run and a writeable butler on it."""
    with PredictedQuantumGraph.open(str(graph_file)) as reader:
        reader.read_init_quanta()  # not the quanta: the broker reads only the thin graph
        init = reader.finish()
    output_run = init.header.output_run
    butler = Butler.from_config(str(repo), run=output_run, writeable=True)
    try:
        init.write_init_outputs(butler, skip_existing=True)
        init.write_configs(butler, compare_existing=True)
        init.write_packages(butler, compare_existing=True)
    except ConflictingDefinitionError as e:
        raise ValueError(
            f"run {output_run!r} of {repo} already holds outputs that differ from this "
            f"graph's (a different graph was run into it?): {e}"
        ) from e
    return output_run, butler


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
