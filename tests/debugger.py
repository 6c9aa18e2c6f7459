"""A stand-in debugger module for ``pdb="tests.debugger"``: records post-mortem calls."""

from __future__ import annotations

from types import TracebackType

calls: list[TracebackType | None] = []


def post_mortem(tb: TracebackType | None = None) -> None:
    calls.append(tb)
