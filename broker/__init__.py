"""Floor 3: the broker (graph state, scheduler, registry, pool, server loop) and the public
``MPGraphExecutor``. Imports ``common`` and, to spawn workers, ``worker``.
"""

from broker.graph_executor import ExecutionGraphFixup, MPGraphExecutor
from common.errors import MPGraphExecutorError, MPTimeoutError

__all__ = ["ExecutionGraphFixup", "MPGraphExecutor", "MPGraphExecutorError", "MPTimeoutError"]
