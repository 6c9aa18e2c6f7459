"""Run configuration: frozen, validated at construction, built by entry points, passed down.

Must not read the environment or any global state.
"""

from __future__ import annotations

import math
import multiprocessing
from dataclasses import dataclass
from pathlib import Path

from common.errors import ConfigError
from common.resources import Amounts

__all__ = ["ExecutionConfig"]


@dataclass(frozen=True, slots=True)
class ExecutionConfig:
    """How one run executes. Times are seconds.

    ``timeout_s`` is the default per-quantum timeout (a quantum's own ``timeout_s`` wins);
    ``retries`` is how many times a quantum lost with its worker (or failed as below) is
    dispatched again;
    ``run_dir`` holds logs (a fresh temporary directory when None); ``prefetch`` is how many
    quanta a local worker queues behind the running one (hides the dispatch round trip).

    Resources (``common.resources``; memory in MiB): ``memory_mb``, ``cpus`` and
    ``resources`` are the run's budgets (None: no limit; entry points fill the host's
    defaults, and set ``memory_from_host`` for memory); ``memory_per_quantum_mb`` /
    ``cores_per_quantum`` what a quantum declaring nothing requests, ``label_requests``
    what each task label requests (a BPS config's
    ``pipetask:`` block; a graph's own declarations win). ``memory_enforce``: a quantum past
    its declared memory is killed, warned about, or left alone. A memory failure is retried
    with its request times ``memory_multiplier`` up to ``memory_max_mb``; a failure whose
    exit code is in ``retry_unless_exit`` is never retried. ``max_failures``: after this many
    quanta failed for good nothing new starts (fail-fast is 1).
    """

    num_workers: int = 1
    timeout_s: float | None = None
    fail_fast: bool = False
    start_method: str = "spawn"
    heartbeat_interval_s: float = 1.0
    liveness: int = 10
    retries: int = 1
    max_quanta_per_executor: int | None = None
    max_rss_mb: int | None = None
    run_dir: Path | None = None
    startup_timeout_s: float = 60.0
    shutdown_grace_s: float = 2.0
    prefetch: int = 1
    progress_interval_s: float = 5.0
    local_workers: int | None = None  # workers this broker starts; None: num_workers
    endpoint: str | None = None  # serve here (tcp:// needs CURVE keys); None: private ipc
    memory_mb: float | None = None
    memory_from_host: bool = False  # memory_mb is the host's default, not the user's
    memory_reserve_mb: float | None = None  # the host's available memory kept above this
    cpus: int | None = None
    cpus_from_host: bool = False  # cpus is the default: it grows with the workers' threads
    resources: Amounts | None = None
    memory_per_quantum_mb: float | None = None
    cores_per_quantum: int | None = None
    label_requests: dict[str, Amounts] | None = None
    memory_enforce: str = "kill"
    memory_multiplier: float | None = None
    memory_max_mb: float | None = None
    retry_unless_exit: frozenset[int] | None = None
    max_failures: int | None = None

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ConfigError(f"number of processes must be at least 1, got {self.num_workers}")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ConfigError(f"timeout must be positive, got {self.timeout_s}")
        if self.start_method not in multiprocessing.get_all_start_methods():
            raise ConfigError(
                f"start method {self.start_method!r} is not one of "
                f"{', '.join(multiprocessing.get_all_start_methods())}"
            )
        if self.heartbeat_interval_s <= 0 or self.liveness < 1:
            raise ConfigError("heartbeat interval must be positive and liveness at least 1")
        if self.retries < 0:
            raise ConfigError(f"retries must be >= 0, got {self.retries}")
        if self.max_quanta_per_executor is not None and self.max_quanta_per_executor < 1:
            raise ConfigError("max quanta per executor must be at least 1")
        if self.max_rss_mb is not None and self.max_rss_mb < 1:
            raise ConfigError("max RSS must be at least 1 MB")
        if self.progress_interval_s <= 0:
            raise ConfigError("progress interval must be positive")
        if self.local_workers is not None and self.local_workers < 0:
            raise ConfigError(f"local workers must be >= 0, got {self.local_workers}")
        if self.endpoint is not None and not self.endpoint.startswith(("ipc://", "tcp://")):
            raise ConfigError(f"endpoint {self.endpoint!r} must be ipc://PATH or tcp://HOST:PORT")
        if self.prefetch < 0:
            raise ConfigError(f"prefetch must be >= 0, got {self.prefetch}")
        if not (0 < self.startup_timeout_s < math.inf and 0 <= self.shutdown_grace_s < math.inf):
            raise ConfigError("startup timeout must be positive and shutdown grace >= 0, finite")
        if not math.isfinite(self.heartbeat_interval_s):
            raise ConfigError("heartbeat interval must be finite")
        self._check_resources()

    def _check_resources(self) -> None:
        for name, value in (
            ("memory", self.memory_mb),
            ("memory per quantum", self.memory_per_quantum_mb),
            ("memory max", self.memory_max_mb),
        ):
            if value is not None and not 0 < value < math.inf:
                raise ConfigError(f"{name} must be a positive size, got {value!r} MiB")
        for name, count in (("cpus", self.cpus), ("cores per quantum", self.cores_per_quantum)):
            if count is not None and count < 1:
                raise ConfigError(f"{name} must be at least 1, got {count}")
        if self.memory_enforce not in ("kill", "warn", "off"):
            raise ConfigError(
                f"memory enforcement {self.memory_enforce!r} is not one of kill, warn, off"
            )
        factor = self.memory_multiplier
        if factor is not None and not 1 < factor < math.inf:
            raise ConfigError(f"memory multiplier must be more than 1, got {factor}")
        if self.max_failures is not None and self.max_failures < 1:
            raise ConfigError(f"max failures must be at least 1, got {self.max_failures}")
        for name, amount in (self.resources or {}).items():
            if not 0 < amount < math.inf:
                raise ConfigError(f"resource {name} must be a positive amount, got {amount}")

    @property
    def spawn_count(self) -> int:
        """How many local workers the broker starts."""
        return self.num_workers if self.local_workers is None else self.local_workers

    @property
    def in_process(self) -> bool:
        return self.num_workers == 1 and self.local_workers is None and self.endpoint is None

    @property
    def worker_silence_limit_s(self) -> float:
        """A worker silent this long is lost."""
        return self.heartbeat_interval_s * self.liveness
