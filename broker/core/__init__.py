"""The broker core: every quantum transition and dispatch decision, stepped with events and an
explicit ``now`` (``core``), and what it owns: graph state, scheduler, dispatch planner, worker
registry and supply, ledger, footprint, monitor. Pure: imports no driver, no transport, no
socket, process or file (the journal it writes is handed in).
"""

from broker.core.core import (
    BACKSTOP_GRACE_S,
    ORPHAN_GRACE_S,
    STARTUP_HOLD_S,
    STEAL_AFTER_S,
    BrokerCore,
    RunTimings,
    WorkerView,
    check_requests,
)

__all__ = [
    "BACKSTOP_GRACE_S",
    "ORPHAN_GRACE_S",
    "STARTUP_HOLD_S",
    "STEAL_AFTER_S",
    "BrokerCore",
    "RunTimings",
    "WorkerView",
    "check_requests",
]
