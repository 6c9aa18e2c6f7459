"""The quantum: one task run on one data id. Owns its plain-data form and task-path resolution.

Must not touch the butler, sockets or processes.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from common.errors import TaskResolutionError
from common.resources import Amounts, parse_resources

__all__ = ["DataIdValue", "Fields", "Quantum", "checked_fields", "resolve_task"]

DataIdValue = int | str


def _is_mapping(value: object) -> bool:
    # dict first: the ABC check costs a microsecond, paid per quantum when a graph loads
    return type(value) is dict or isinstance(value, Mapping)


_FIELDS = frozenset(
    {"id", "task_label", "task", "data_id", "inputs", "outputs", "config", "timeout", "resources"}
)


def _good_name(key: object, name: object) -> bool:
    return type(key) is str and type(name) is str and bool(key) and bool(name)


def _as_mapping(value: object, what: str) -> dict[str, str]:
    """Inputs/outputs are given as a list of dataset names or as {argument: dataset}."""
    if type(value) is dict and all(_good_name(k, v) for k, v in value.items()):
        return dict(value)  # the common case, checked at a fraction of the general cost
    if _is_mapping(value):
        items = list(cast(Mapping[str, str], value).items())
    elif isinstance(value, list | tuple):
        items = [(name, name) for name in value]
    else:
        raise ValueError(f"{what} must be a list of dataset names or a mapping, not {value!r}")
    for key, name in items:
        if not isinstance(key, str) or not isinstance(name, str) or not key or not name:
            raise ValueError(f"{what} entries must be non-empty strings, got {key!r}: {name!r}")
    return dict(items)


@dataclass(frozen=True, slots=True)
class Quantum:
    """One unit of work.

    ``inputs``/``outputs`` map the task's argument (or result key) names to dataset names;
    a plain list of dataset names means each name is its own argument name. ``resources``:
    what it needs to run (``memory``, ``cpus``, custom names; ``common.resources``), kept in
    canonical form (memory in MiB).
    """

    id: str
    task_label: str
    task: str
    data_id: Mapping[str, DataIdValue] = field(default_factory=dict)
    inputs: Mapping[str, str] = field(default_factory=dict)
    outputs: Mapping[str, str] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    timeout_s: float | None = None
    resources: Mapping[str, Any] = field(default_factory=dict)  # canonical floats once built

    def __post_init__(self) -> None:
        # Accept the list form in code too; store the normalized mapping.
        object.__setattr__(self, "inputs", _as_mapping(self.inputs, "inputs"))
        object.__setattr__(self, "outputs", _as_mapping(self.outputs, "outputs"))
        try:
            object.__setattr__(self, "resources", parse_resources(self.resources))
        except ValueError as e:
            raise ValueError(f"quantum {self.id!r}: {e}") from e

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "task_label": self.task_label,
            "task": self.task,
            "data_id": dict(self.data_id),
            "inputs": dict(self.inputs),
            "outputs": dict(self.outputs),
            "config": dict(self.config),
        }
        if self.timeout_s is not None:
            out["timeout"] = self.timeout_s
        if self.resources:
            out["resources"] = dict(self.resources)
        return out

    @classmethod
    def from_dict(cls, raw: object) -> Quantum:
        """Build from plain data (a graph file entry or a wire message); ValueError if bad."""
        return cls.trusted(*checked_fields(raw))

    @classmethod
    def trusted(
        cls,
        qid: str,
        task_label: str,
        task: str,
        data_id: dict[str, DataIdValue],
        inputs: dict[str, str],
        outputs: dict[str, str],
        config: dict[str, Any],
        timeout_s: float | None,
        resources: Amounts | None = None,
    ) -> Quantum:
        """Build from fields already checked and normalized (``checked_fields``, or a graph's
        own storage): skips ``__post_init__``'s second pass, paid per quantum."""
        q = object.__new__(cls)
        for name, value in (
            ("id", qid),
            ("task_label", task_label),
            ("task", task),
            ("data_id", data_id),
            ("inputs", inputs),
            ("outputs", outputs),
            ("config", config),
            ("timeout_s", timeout_s),
            ("resources", resources if resources is not None else {}),
        ):
            object.__setattr__(q, name, value)
        return q


Fields = tuple[
    str,
    str,
    str,
    dict[str, DataIdValue],
    dict[str, str],
    dict[str, str],
    dict[str, Any],
    float | None,
    Amounts | None,
]


def _id_value(key: object, value: object) -> bool:
    """The general (subclass-tolerant) data id check, where the exact-type one failed."""
    return isinstance(key, str) and isinstance(value, int | str) and not isinstance(value, bool)


def checked_fields(raw: object) -> Fields:
    """A quantum's plain data checked and normalized: (id, task_label, task, data_id, inputs,
    outputs, config, timeout_s, resources or None); ValueError naming the problem."""
    if not _is_mapping(raw):
        raise ValueError(f"a quantum must be a mapping, not {type(raw).__name__}")
    raw = cast(Mapping[str, Any], raw)
    unknown = raw.keys() - _FIELDS
    if unknown:
        raise ValueError(f"unknown quantum field(s): {', '.join(sorted(map(str, unknown)))}")
    qid = raw.get("id")
    if not isinstance(qid, str) or not qid:
        raise ValueError(f"quantum id must be a non-empty string, got {qid!r}")
    task = raw.get("task")
    if not isinstance(task, str) or ":" not in task:
        raise ValueError(f"quantum {qid!r}: task must be 'pkg.module:callable', got {task!r}")
    label = raw.get("task_label", task.rpartition(":")[2])
    if not isinstance(label, str) or not label:
        raise ValueError(f"quantum {qid!r}: task_label must be a non-empty string")
    data_id = raw.get("data_id", {})
    if not _is_mapping(data_id) or not all(
        (type(k) is str and (type(v) is int or type(v) is str)) or _id_value(k, v)
        for k, v in data_id.items()
    ):
        raise ValueError(f"quantum {qid!r}: data_id must map strings to int or str")
    config = raw.get("config", {})
    if not _is_mapping(config) or not all(isinstance(k, str) for k in config):
        raise ValueError(f"quantum {qid!r}: config must be a mapping with string keys")
    timeout = raw.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0
    ):
        raise ValueError(f"quantum {qid!r}: timeout must be a positive number of seconds")
    try:
        inputs = _as_mapping(raw.get("inputs", {}), "inputs")
        outputs = _as_mapping(raw.get("outputs", {}), "outputs")
        resources = parse_resources(raw["resources"]) if "resources" in raw else None
    except ValueError as e:
        raise ValueError(f"quantum {qid!r}: {e}") from e
    timeout_s = float(timeout) if timeout is not None else None
    return qid, label, task, dict(data_id), inputs, outputs, dict(config), timeout_s, resources


def resolve_task(path: str) -> Callable[..., Any]:
    """Import ``pkg.module:callable`` and return the callable."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise TaskResolutionError(f"task path {path!r} is not of the form 'pkg.module:callable'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise TaskResolutionError(f"task path {path!r}: cannot import {module_name!r}: {e}") from e
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as e:
            raise TaskResolutionError(f"task path {path!r}: {module_name} has no {attr!r}") from e
    if not callable(target):
        raise TaskResolutionError(
            f"task path {path!r} names a {type(target).__name__}, not a callable"
        )
    return target  # type: ignore[no-any-return]
