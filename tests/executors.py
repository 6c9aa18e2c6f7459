"""A custom quantum executor for tests: proves the broker ships it to attached workers."""

from __future__ import annotations

import os

from common.butler import Butler
from common.quantum import Quantum


class TaggingExecutor:
    """Stores ``"<tag> <quantum id> <pid>"`` as each quantum's outputs, running no task."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def execute(self, quantum: Quantum, butler: Butler) -> None:
        for dataset in quantum.outputs.values():
            butler.put(dataset, f"{self.tag} {quantum.id} {os.getpid()}", replace=True)
