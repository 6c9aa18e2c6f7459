"""A BPS submit YAML, read for what a one-host run needs of it: per task label and at the top
level ``requestMemory`` (MB) and ``requestCpus``, and ``memoryMultiplier``,
``requestMemoryMax``, ``numberOfRetries``, ``retryUnlessExit``. BPS's precedence: a value under
``pipetask: LABEL:`` wins over the same key at the top level, for that label. Everything else
in the file (sites, WMS, templates, payload) is left alone. ``write_pipetask_block`` writes the
block a run's measurements suggest. Must not touch sockets or processes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from common.errors import ConfigError
from common.resources import CPUS, MEMORY, Amounts, parse_amount

__all__ = ["BpsSettings", "read_bps_config"]

_PER_LABEL = {"requestMemory": MEMORY, "requestCpus": CPUS}


@dataclass(frozen=True, slots=True)
class BpsSettings:
    """What a BPS config says, in zmpexec's terms (memory in MiB)."""

    defaults: Amounts = field(default_factory=dict)  # top-level requestMemory / requestCpus
    by_label: dict[str, Amounts] = field(default_factory=dict)  # pipetask: LABEL: ...
    memory_multiplier: float | None = None
    memory_max_mb: float | None = None
    retries: int | None = None
    retry_unless_exit: frozenset[int] | None = None


def read_bps_config(path: Path) -> BpsSettings:
    """The settings of BPS submit YAML ``path``; ConfigError naming the file and the key."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read BPS config {path}: {e.strerror or e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"BPS config {path} is not valid YAML: {' '.join(str(e).split())}") from e
    if not isinstance(raw, Mapping):
        raise ConfigError(f"BPS config {path}: expected a mapping at the top level")
    try:
        return _settings(raw)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"BPS config {path}: {e}") from e


def _settings(raw: Mapping[str, Any]) -> BpsSettings:
    defaults = _requests(raw, "top level")
    by_label: dict[str, Amounts] = {}
    pipetask = raw.get("pipetask") or {}
    if not isinstance(pipetask, Mapping):
        raise ValueError("'pipetask' must map task labels to settings")
    for label, section in pipetask.items():
        if not isinstance(section, Mapping):
            raise ValueError(f"pipetask: {label}: expected a mapping")
        requests = _requests(section, f"pipetask: {label}")
        if requests:
            by_label[str(label)] = requests
    multiplier = _number(raw, "memoryMultiplier")
    if multiplier is not None and not multiplier > 1:
        raise ValueError(f"memoryMultiplier must be more than 1, got {multiplier}")
    memory_max = raw.get("requestMemoryMax")
    retries = raw.get("numberOfRetries")
    if retries is not None and (isinstance(retries, bool) or not isinstance(retries, int)):
        raise ValueError(f"numberOfRetries must be a whole number, got {retries!r}")
    if retries is not None and retries < 0:
        raise ValueError(f"numberOfRetries must be >= 0, got {retries}")
    return BpsSettings(
        defaults,
        by_label,
        multiplier,
        None if memory_max is None else _memory(memory_max, "requestMemoryMax"),
        retries,
        _exit_codes(raw.get("retryUnlessExit")),
    )


def _requests(section: Mapping[str, Any], where: str) -> Amounts:
    out: Amounts = {}
    for key, name in _PER_LABEL.items():
        if key in section:
            try:
                out[name] = parse_amount(name, section[key])
            except ValueError as e:
                raise ValueError(f"{where}: {key}: {e}") from e
    return out


def _memory(value: object, key: str) -> float:
    try:
        return parse_amount(MEMORY, value)
    except ValueError as e:
        raise ValueError(f"{key}: {e}") from e


def _number(raw: Mapping[str, Any], key: str) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{key} must be a number, got {value!r}")
    return float(value)


def _exit_codes(value: object) -> frozenset[int] | None:
    """``retryUnlessExit``: one exit code or a list of them."""
    if value is None:
        return None
    codes = value if isinstance(value, list) else [value]
    if not all(isinstance(c, int) and not isinstance(c, bool) for c in codes):
        raise ValueError(f"retryUnlessExit must be an exit code or a list of them, got {value!r}")
    return frozenset(codes)
