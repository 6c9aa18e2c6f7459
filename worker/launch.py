"""How a worker agent process is launched: its configuration and that configuration's one
command-line form (``python -m worker.agent --endpoint ...``), used by the broker's pool, by
``zmpexec worker`` and by the agent's own entry point. Must not start anything itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["QUEUE_MAX", "AgentConfig", "agent_command", "agent_env"]


QUEUE_MAX = 8  # quanta an agent queues at most by default


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """``parent_pid``: exit when that process is gone (local workers spawned by a broker)."""

    endpoint: str
    parent_pid: int | None = None
    startup_timeout_s: float = 60.0
    log_level: int = logging.WARNING
    # The most quanta this agent accepts queued behind the running one (its HELLO declares
    # 1 + this many slots); how many it is sent is the broker's call, by quantum durations.
    prefetch: int = QUEUE_MAX
    keys_dir: Path | None = None  # CURVE keys for a tcp endpoint (RUN_DIR/curve)

    def to_argv(self) -> list[str]:
        """Options that ``from_argv`` turns back into this config (defaults left out)."""
        argv = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None and value != f.default:
                argv += [_option(f.name), str(value)]
        return argv

    @classmethod
    def from_argv(cls, argv: Sequence[str] | None = None) -> AgentConfig:
        parser = argparse.ArgumentParser(prog="python -m worker.agent")
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            required = f.default is dataclasses.MISSING
            parser.add_argument(
                _option(f.name),
                dest=f.name,
                type=_scalar(hints[f.name]),
                required=required,
                default=None if required else f.default,
            )
        return cls(**vars(parser.parse_args(argv)))


def _option(name: str) -> str:
    return "--" + name.removesuffix("_s").replace("_", "-")


def _scalar(hint: Any) -> Any:
    """``int`` for ``int | None``: the type an option's text converts to."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def agent_command(config: AgentConfig) -> list[str]:
    """The argv that starts an agent in a fresh interpreter."""
    return [sys.executable, "-m", "worker.agent", *config.to_argv()]


def agent_env() -> dict[str, str]:
    """This process's environment with its import path, so the agent imports what this
    process can (task modules, the executor's class)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
    return env
