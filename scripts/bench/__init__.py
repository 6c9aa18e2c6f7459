"""Benchmarks and drills (not tests): the anchor workloads against peers (``anchors``), LSST
graphs (``lsst``), scale (``scale``), footprint, faults (``faults``), the kill storm
(``storm``), and the research floors (``sched_floor``, ``coldpath``)."""
