"""The run's resource options as the entry points take them (sizes as strings, a BPS config
path), turned into ``ExecutionConfig`` fields, with the host's defaults: memory is what the
host has available when the run starts less a reserve for the broker, the workers' agents and
the OS (``MEMORY_RESERVE``); cpus the larger of ``-j`` and the CPUs this process may use
(and, in the planner, never fewer than the registered workers' threads).
Reads the host; the core gets plain numbers.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

import psutil

from common.bps import read_bps_config
from common.errors import ConfigError
from common.resources import CPUS, MEMORY, Amounts, parse_amount, parse_memory

__all__ = ["MEMORY_RESERVE", "host_cpus", "host_memory_mb", "host_reserve_mb", "resource_options"]

# Kept back from the host's available memory: at least 1 GiB, and a twentieth of the total
MEMORY_RESERVE: Final = (1024.0, 0.05)


def host_reserve_mb() -> float:
    """The host memory kept back, MiB (``MEMORY_RESERVE``)."""
    floor, share = MEMORY_RESERVE
    return max(floor, share * psutil.virtual_memory().total / 2**20)


def host_memory_mb() -> float:
    """The default memory budget, MiB: available now, less the reserve."""
    return max(1.0, psutil.virtual_memory().available / 2**20 - host_reserve_mb())


def host_cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # (not every platform has affinity)
        return os.cpu_count() or 1


def _size(value: object, what: str) -> float | None:
    if value is None:
        return None
    try:
        return parse_memory(value)
    except ValueError as e:
        raise ConfigError(str(e).replace("memory", what, 1)) from e


def _custom(resources: object) -> Amounts | None:
    if resources is None:
        return None
    if not isinstance(resources, Mapping):
        raise ConfigError(f"resources must map names to amounts, not {resources!r}")
    out: Amounts = {}
    for name, amount in resources.items():
        if name in (MEMORY, CPUS):
            raise ConfigError(f"resource {name!r} is set with its own option (memory, cpus)")
        try:
            out[str(name)] = parse_amount(str(name), amount)
        except ValueError as e:
            raise ConfigError(f"resource {name}: {e}") from e
    return out


def resource_options(jobs: int, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with the resource ones as ``ExecutionConfig`` takes them: ``memory`` ->
    ``memory_mb`` (default: ``host_memory_mb``), ``cpus`` (default: max(jobs, host CPUs)),
    ``resources``, ``memory_per_quantum`` -> ``memory_per_quantum_mb``,
    ``cores_per_quantum``, ``memory_max`` -> ``memory_max_mb``, ``retry_unless_exit``, and
    ``bps_config`` (its values where the options give none; its per-label requests)."""
    out = dict(options)
    bps_path = out.pop("bps_config", None)
    bps = read_bps_config(Path(bps_path)) if bps_path is not None else None
    memory = _size(out.pop("memory", None), "memory")
    out["memory_mb"] = memory if memory is not None else host_memory_mb()
    out["memory_from_host"] = memory is None
    out["memory_reserve_mb"] = host_reserve_mb()  # the pressure watch keeps it available
    cpus = out.pop("cpus", None)
    out["cpus"] = int(cpus) if cpus is not None else max(jobs, host_cpus())
    out["cpus_from_host"] = cpus is None
    out["resources"] = _custom(out.pop("resources", None))
    per_quantum = _size(out.pop("memory_per_quantum", None), "memory per quantum")
    memory_max = _size(out.pop("memory_max", None), "memory max")
    codes = out.pop("retry_unless_exit", None)
    if bps is not None:
        per_quantum = per_quantum if per_quantum is not None else bps.defaults.get(MEMORY)
        if out.get("cores_per_quantum") is None and CPUS in bps.defaults:
            out["cores_per_quantum"] = int(bps.defaults[CPUS])
        out["label_requests"] = bps.by_label
        if out.get("memory_multiplier") is None:
            out["memory_multiplier"] = bps.memory_multiplier
        memory_max = memory_max if memory_max is not None else bps.memory_max_mb
        if out.get("retries") is None and bps.retries is not None:
            out["retries"] = bps.retries
        codes = codes if codes is not None else bps.retry_unless_exit
    out["memory_per_quantum_mb"] = per_quantum
    out["memory_max_mb"] = memory_max
    if codes is not None:
        out["retry_unless_exit"] = frozenset(_exit_codes(codes))
    return {k: v for k, v in out.items() if v is not None}


def _exit_codes(codes: object) -> Iterable[int]:
    values = codes if isinstance(codes, list | tuple | set | frozenset) else [codes]
    if not all(isinstance(c, int) and not isinstance(c, bool) for c in values):
        raise ConfigError(f"retry_unless_exit must be exit codes, not {codes!r}")
    return values  # type: ignore[return-value]
