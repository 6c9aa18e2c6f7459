"""Floor 2: the worker agent, its executor child, quantum executors and log capture.

Imports ``common`` only.
"""
