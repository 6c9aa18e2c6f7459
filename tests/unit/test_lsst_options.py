"""``zmpexec lsst run``'s pipetask options as parsed (no LSST stack needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.cli.main import _parser, main


def test_repeatable_pipetask_options_take_one_value_each_and_split_commas() -> None:
    args = _parser().parse_args(
        ["lsst", "run", "-b", "repo", "-i", "a,b", "-i", "c", "--skip-existing-in", "out", "g.qg"]
    )
    assert args.input == ["a", "b", "c"]
    assert args.skip_existing_in == ["out"]
    assert args.qgraph == Path("g.qg")  # (not taken as a collection)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["-p", "pipeline.yaml"], "-p builds a quantum graph"),
        (["--qbb", "--clobber-outputs"], "--clobber-outputs is not for --qbb"),
        (["--no-existing-outputs"], "--no-existing-outputs is for --qbb"),
        (["--replace-run", "--extend-run", "-o", "out"], "--replace-run cannot go with"),
        (["--prune-replaced", "purge"], "--prune-replaced needs --replace-run"),
    ],
)
def test_option_combinations_pipetask_cannot_run_are_one_line_errors(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["lsst", "run", "-b", "repo", "-g", "g.qg", *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert says in err and err.count("\n") == 1
