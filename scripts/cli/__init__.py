"""The ``zmpexec`` command line: parse, build the config, call one object, map the outcome to
an exit code (``main``); its views, ``attach`` (``zmpexec worker``), ``timeline`` and
``lsst run``."""

from scripts.cli.main import main

__all__ = ["main"]
