"""Small graph builders for tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from common.graph import QuantumGraph
from common.quantum import Quantum


def _mapping(names: Sequence[str] | Mapping[str, str]) -> dict[str, str]:
    return dict(names) if isinstance(names, Mapping) else {n: n for n in names}


def quantum(
    qid: str,
    task: str = "ok",
    *,
    label: str | None = None,
    inputs: Sequence[str] | Mapping[str, str] = (),
    outputs: Sequence[str] | Mapping[str, str] | None = None,
    config: Mapping[str, Any] | None = None,
    data_id: Mapping[str, int | str] | None = None,
    timeout_s: float | None = None,
    resources: Mapping[str, Any] | None = None,
) -> Quantum:
    """A quantum running ``tests.tasks:<task>``; by default it outputs dataset ``<qid>``."""
    return Quantum(
        id=qid,
        task_label=label or task,
        task=f"tests.tasks:{task}",
        data_id=dict(data_id or {"id": qid}),
        inputs=_mapping(inputs),
        outputs=_mapping(outputs if outputs is not None else [qid]),
        config=dict(config or {}),
        timeout_s=timeout_s,
        resources=dict(resources or {}),
    )


def independent(n: int, task: str = "ok", **config: Any) -> QuantumGraph:
    return QuantumGraph.from_quanta([quantum(f"q{i}", task, config=config) for i in range(n)])


def chain(n: int, task: str = "ok") -> QuantumGraph:
    return QuantumGraph.from_quanta(
        [quantum(f"c{i}", task, inputs=[f"c{i - 1}"] if i else []) for i in range(n)]
    )
