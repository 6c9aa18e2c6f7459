"""What a quantum needs to run: memory, cores and custom resources, as declared in graphs, on
the command line and in BPS configs, in one canonical form.

Canonical: a dict of resource name to amount. ``memory`` in MiB (float), ``cpus`` a whole
number >= 1, any other name a custom resource (a database connection, a licence, a GPU) with
an amount > 0. Memory given as a plain number means MB as LSST's ``--memory-per-quantum`` and
BPS's ``requestMemory`` mean it; with a unit (``512MB``, ``2GB``, ``1.5GiB``) it is converted.
MB and MiB are the same unit here (2**20 bytes), as HTCondor and BPS count them. Pure.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Final

__all__ = [
    "CPUS",
    "MEMORY",
    "Amounts",
    "format_memory",
    "parse_amount",
    "parse_label_resources",
    "parse_memory",
    "parse_resources",
]

MEMORY: Final = "memory"
CPUS: Final = "cpus"

Amounts = dict[str, float]  # resource name -> amount (memory in MiB)

_UNITS: Final = {
    "": 1.0,
    "b": 1.0 / 2**20,
    "k": 1.0 / 1024,
    "kb": 1.0 / 1024,
    "kib": 1.0 / 1024,
    "m": 1.0,
    "mb": 1.0,
    "mib": 1.0,
    "g": 1024.0,
    "gb": 1024.0,
    "gib": 1024.0,
    "t": 1024.0**2,
    "tb": 1024.0**2,
    "tib": 1024.0**2,
}
_SIZE: Final = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*")
_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


def parse_memory(value: object) -> float:
    """Memory in MiB from a number (MB) or a string with a unit; ValueError naming the value."""
    if isinstance(value, bool):
        raise ValueError(f"memory must be a size such as 2GB or a number of MB, not {value!r}")
    if isinstance(value, int | float):
        mib = float(value)
    elif isinstance(value, str):
        m = _SIZE.fullmatch(value)
        unit = m.group(2).lower() if m else ""
        if m is None or unit not in _UNITS:
            raise ValueError(f"memory {value!r} is not a size (such as 512MB, 2GB, 1.5GiB)")
        mib = float(m.group(1)) * _UNITS[unit]
    else:
        raise ValueError(f"memory must be a size such as 2GB or a number of MB, not {value!r}")
    if not math.isfinite(mib) or mib <= 0:
        raise ValueError(f"memory must be more than 0, got {value!r}")
    return mib


def parse_amount(name: str, value: object) -> float:
    """The canonical amount of resource ``name``; ValueError naming the value."""
    if name == MEMORY:
        return parse_memory(value)
    if name == CPUS:
        whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        if isinstance(value, bool) or not whole or value < 1:  # type: ignore[operator]
            raise ValueError(f"cpus must be a whole number >= 1, got {value!r}")
        return float(value)  # type: ignore[arg-type]
    if not _NAME.fullmatch(name):
        raise ValueError(f"resource name {name!r} is not a name (letters, digits, _ . -)")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"resource {name} must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"resource {name} must be more than 0, got {value!r}")
    return float(value)


def parse_resources(raw: object) -> Amounts:
    """A ``resources`` mapping in canonical form; ValueError naming what is wrong."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ValueError(f"resources must be a mapping of name to amount, not {raw!r}")
    out: Amounts = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"resource names must be non-empty strings, got {name!r}")
        out[name] = parse_amount(name, value)
    return out


def format_memory(mib: float) -> str:
    """A memory amount for people: ``512 MiB``, ``1.5 GiB``."""
    if mib >= 1024:
        return f"{mib / 1024:,.1f} GiB"
    return f"{mib:,.0f} MiB"


def parse_label_resources(raw: object) -> dict[str, Amounts]:
    """A graph's ``resources`` block (task label -> resources) in canonical form; ValueError
    naming the label and the problem."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ValueError(f"resources must map task labels to resources, not {raw!r}")
    out: dict[str, Amounts] = {}
    for label, value in raw.items():
        if not isinstance(label, str) or not label:
            raise ValueError(f"resources: task labels must be non-empty strings, got {label!r}")
        try:
            out[label] = parse_resources(value)
        except ValueError as e:
            raise ValueError(f"resources of task label {label!r}: {e}") from e
    return out
