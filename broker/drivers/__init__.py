"""Drivers of the broker core: each translates the core's actions into its transport's
messages or futures and what it observes back into core events, and decides nothing.
``zmq_server`` (local and attached agents over ZeroMQ and Unix-socket links), ``dask_engine``
(a Dask distributed cluster, with ``dask_cluster``); the in-process driver (``in_process``);
``progress``, what they all do alike for watchers. A new transport goes here.
"""
