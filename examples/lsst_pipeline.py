"""A real LSST pipeline for tests and benchmarks: a repository on disk with N detectors, a
pipeline of pipe_base's ``AddTask`` (optionally with a task that fails or hangs on chosen
detectors), and its quantum graph, built with pipe_base's own test utilities. Needs the
``[lsst]`` extra; nothing imports it unless it is used."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy
from lsst.daf.butler import Butler
from lsst.pex.config import Field
from lsst.pipe.base import InvalidQuantumError, NoWorkFound, Pipeline
from lsst.pipe.base.graph import QuantumGraph
from lsst.pipe.base.tests.simpleQGraph import (
    AddTask,
    AddTaskConfig,
    makeSimpleQGraph,
    registerDatasetTypes,
)

__all__ = ["FlakyAddTask", "make_repo_and_graph"]


class FlakyAddTaskConfig(AddTaskConfig):
    fail_detector = Field[int](doc="raise on this detector", default=-1)  # type: ignore[no-untyped-call]
    invalid_detector = Field[int](doc="raise InvalidQuantumError here", default=-1)  # type: ignore[no-untyped-call]
    sleep_detector = Field[int](doc="sleep on this detector", default=-1)  # type: ignore[no-untyped-call]
    sleep_s = Field[float](doc="how long to sleep", default=0.0)  # type: ignore[no-untyped-call]
    needs_mb = Field[float](  # type: ignore[no-untyped-call]
        doc="raise MemoryError where ExecutionResources.max_mem is under this (MiB; 0: never)",
        default=0.0,
    )
    no_work_detector = Field[int](doc="raise NoWorkFound on this detector", default=-1)  # type: ignore[no-untyped-call]
    alloc_detector = Field[int](doc="allocate alloc_mb MiB on this detector", default=-1)  # type: ignore[no-untyped-call]
    alloc_mb = Field[int](doc="how much to allocate (and touch)", default=0)  # type: ignore[no-untyped-call]


class FlakyAddTask(AddTask):
    """AddTask that fails, is invalid, hangs or allocates memory on configured detectors,
    fails with ``MemoryError`` where it is given less memory than it needs (as LSST's mocks'
    ``memory_required``), and records the ``ExecutionResources`` it was given in its
    metadata (``maxMemMiB``, 0 for none, and ``numCores``)."""

    ConfigClass = FlakyAddTaskConfig
    _DefaultName = "flaky_add_task"

    def runQuantum(self, butlerQC: Any, inputRefs: Any, outputRefs: Any) -> None:
        config: FlakyAddTaskConfig = self.config  # type: ignore[assignment]
        detector = butlerQC.quantum.dataId["detector"]
        if detector == config.fail_detector:
            raise RuntimeError(f"detector {detector} failed on purpose")
        if detector == config.invalid_detector:
            raise InvalidQuantumError(f"detector {detector} is invalid")
        if detector == config.no_work_detector:
            raise NoWorkFound(f"nothing to do on detector {detector}")
        if detector == config.sleep_detector:
            time.sleep(config.sleep_s)
        given = butlerQC.resources
        max_mem = 0.0 if given.max_mem is None else given.max_mem.to_value("byte") / 2**20
        self.metadata["maxMemMiB"] = max_mem
        self.metadata["numCores"] = given.num_cores
        if config.needs_mb and max_mem < config.needs_mb:
            raise MemoryError(f"needs {config.needs_mb:g} MiB, given {max_mem:g}")
        if detector == config.alloc_detector:
            block = bytearray(config.alloc_mb * 2**20)  # (zeroed: every page touched)
            del block
        super().runQuantum(butlerQC, inputRefs, outputRefs)


def make_repo_and_graph(
    root: Path, *, n_tasks: int, n_detectors: int, flaky: dict[str, float] | None = None
) -> tuple[Butler, QuantumGraph]:
    """A SQLite + file datastore repository at ``root`` and a graph of ``n_tasks`` chained
    tasks per detector (run ``test``). ``flaky`` configures task1 as a FlakyAddTask."""
    butler, _ = makeSimpleQGraph(nQuanta=1, root=str(root), inMemory=False, run="test")
    for d in range(1, n_detectors):
        butler.registry.insertDimensionData(
            "detector", {"instrument": "INSTR", "id": d, "full_name": f"det{d}"}
        )
        butler.put(
            numpy.array([0.0, 1.0, 2.0, 5.0]),
            "add_dataset0",
            run="test",
            instrument="INSTR",
            detector=d,
        )
    pipeline = Pipeline("zmpexec test pipeline")
    for lvl in range(n_tasks):
        task = FlakyAddTask if (flaky and lvl == 1) else AddTask
        pipeline.addTask(task, f"task{lvl}")
        pipeline.addConfigOverride(f"task{lvl}", "connections.in_tmpl", lvl)
        pipeline.addConfigOverride(f"task{lvl}", "connections.out_tmpl", lvl + 1)
        if flaky and lvl == 1:
            for key, value in flaky.items():
                pipeline.addConfigOverride(f"task{lvl}", key, value)
    registerDatasetTypes(butler.registry, pipeline)
    _, qgraph = makeSimpleQGraph(
        pipeline=pipeline,
        butler=butler,
        callPopulateButler=False,
        run="test",
        makeDatastoreRecords=True,
    )
    return butler, qgraph
