"""``zmpexec lsst run``'s options from ``pipetask run`` / ``run-qbb``: the execution options,
spelled and meant as pipetask does (collections, skip-existing, clobbering, init writes,
partial outputs, graph fixups, logging), and the graph-building options, refused with a
one-line pointer to ``pipetask qgraph``. argparse only: nothing here imports the LSST stack.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

__all__ = ["REFUSED", "add_pipetask_options", "collections_given", "split_commas"]

# pipetask run's options that build a graph (or only describe one): refused
REFUSED = (
    ("-p", "--pipeline"),
    ("-t", "--task"),
    ("--delete",),
    ("-c", "--config"),
    ("-C", "--config-file"),
    ("-s", "--save-pipeline"),
    ("--select-tasks",),
    ("--pipeline-dot",),
    ("--pipeline-mermaid",),
    ("--instrument",),
    ("--qgraph-datastore-records",),
    ("-q", "--save-qgraph"),
    ("--qgraph-dot",),
    ("--qgraph-mermaid",),
    ("--dataset-query-constraint",),
    ("--data-id-table",),
    ("--mock",),
    ("--mock-failure",),
    ("--unmocked-dataset-types",),
    ("-d", "--data-query"),
    ("--show",),
    ("-@", "--options-file"),
)


class _Refuse(argparse.Action):
    """Records a graph-building option (the command refuses it, in one line)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        if namespace.refused is None:
            namespace.refused = option_string


class _Commas(argparse.Action):
    """A repeatable option (one value each time, as click's ``multiple``) whose values may
    each be comma-separated (click's ``split_commas``): all of them, in order."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        items = [values] if isinstance(values, str) else list(values or [])
        have = list(getattr(namespace, self.dest) or [])
        setattr(namespace, self.dest, have + split_commas(items))


def split_commas(values: Sequence[str]) -> list[str]:
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def add_pipetask_options(run: argparse.ArgumentParser) -> None:
    """pipetask's execution options on ``lsst run`` (see the module)."""
    run.set_defaults(refused=None)
    g = run.add_argument_group("pipetask run's options, as pipetask takes them")
    g.add_argument("-g", "--qgraph", dest="qgraph_option", default=None, help="the graph file")
    g.add_argument("--qgraph-id", default=None, help="the graph's id must be this")
    g.add_argument(
        "--qgraph-node-id",
        action=_Commas,
        default=None,
        metavar="UUID",
        help="run only these quanta of the graph",
    )
    g.add_argument("-i", "--input", action=_Commas, default=None, metavar="COLLECTION")
    g.add_argument("-o", "--output", default=None, metavar="COLL", help="output CHAINED collection")
    g.add_argument("--output-run", default=None, metavar="COLL", help="output RUN collection")
    g.add_argument("--extend-run", action="store_true", help="write into an existing output run")
    g.add_argument(
        "--replace-run", action="store_true", help="replace the output chain's first run"
    )
    g.add_argument("--prune-replaced", choices=["unstore", "purge"], default=None)
    g.add_argument("--rebase", action="store_true", help="reset an inconsistent output chain")
    g.add_argument(
        "--skip-existing-in",
        action=_Commas,
        default=None,
        metavar="COLLECTION",
        help="skip quanta whose outputs all exist in these collections",
    )
    g.add_argument("--skip-existing", action="store_true", help="--skip-existing-in the output run")
    g.add_argument(
        "--clobber-outputs", action="store_true", help="remove a failed quantum's earlier outputs"
    )
    g.add_argument(
        "--raise-on-partial-outputs",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="partial outputs are an error, not a qualified success (default: yes)",
    )
    g.add_argument(
        "--no-existing-outputs",
        action="store_true",
        help="(with --qbb) assume no output exists yet: nothing is looked up",
    )
    g.add_argument(
        "--provenance",
        default=None,
        metavar="FILE",
        help="write LSST's provenance quantum graph of the run here (any -j)",
    )
    g.add_argument("--graph-fixup", default=None, metavar="NAME", help="ExecutionGraphFixup")
    g.add_argument("--pdb", default=None, metavar="MODULE", help="post-mortem debugger (-j 1)")
    g.add_argument("--debug", action="store_true", help="lsstDebug for the tasks")
    g.add_argument("--profile", default=None, metavar="FILE", help="cProfile the run to FILE")
    g.add_argument(
        "--enable-implicit-threading",
        action="store_true",
        help="let numerical libraries start threads of their own",
    )
    g.add_argument("--skip-init-writes", action="store_true", help="write no init-outputs")
    g.add_argument(
        "--init-only", action="store_true", help="write init-outputs (and types), run nothing"
    )
    g.add_argument("--register-dataset-types", action="store_true")
    g.add_argument("--no-versions", action="store_true", help="write or check no versions")
    g.add_argument("--start-method", choices=["spawn", "forkserver", "fork"], default=None)
    g.add_argument(
        "--log-level",
        action="append",
        default=[],
        metavar="LEVEL|COMPONENT=LEVEL",
        help="log level, of all or of one logger (repeatable)",
    )
    g.add_argument("--long-log", action="store_true", help="long log lines")
    g.add_argument("--log-file", action="append", default=[], metavar="FILE")
    for flags in REFUSED:
        run.add_argument(*flags, action=_Refuse, nargs="*", help=argparse.SUPPRESS)


def collections_given(args: argparse.Namespace) -> bool:
    """Whether any of pipetask's collection options were given (pipetask's rules apply)."""
    return bool(
        args.input
        or args.output
        or args.output_run
        or args.extend_run
        or args.replace_run
        or args.rebase
    )
