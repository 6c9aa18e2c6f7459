"""Admission on a whole graph: W5's shape (small, medium and large quanta under a memory
budget, no two large ones fitting at once) played on the core in simulated time, declared and
learned. The budget holds and the makespan stays near the bound (an offline search found
1.20 x; greedy critical-path order alone gives 1.74 x)."""

from __future__ import annotations

import itertools

import pytest

from broker.drivers.zmq_server import transport_profile
from common.config import ExecutionConfig
from tests.sim import W5_KINDS, W5_LOWER_BOUND_S, simulate, w5_graph

PROFILE = transport_profile(ExecutionConfig(num_workers=8))


@pytest.mark.parametrize(("declared", "bound"), [(True, 1.25), (False, 1.45)])
def test_w5_runs_within_its_budget_near_the_bound(declared: bool, bound: float) -> None:
    outcome = simulate(
        w5_graph(declared),
        8,
        lambda label: W5_KINDS[label],
        memory_mb=1500,
        transport=PROFILE,
        num_workers=8,
    )
    assert outcome.peak_mb <= 1500
    assert outcome.makespan <= bound * W5_LOWER_BOUND_S
    # the large quanta cannot overlap: they run one after another
    larges = sorted(outcome.starts[f"l{g}"] for g in range(4))
    assert all(b - a >= W5_KINDS["large"][1] for a, b in itertools.pairwise(larges))


def test_w5_without_admission_would_overrun_its_budget() -> None:
    # (what the budget prevents: eight workers and no memory limit)
    outcome = simulate(w5_graph(True), 8, lambda label: W5_KINDS[label], num_workers=8)
    assert outcome.peak_mb > 1500
