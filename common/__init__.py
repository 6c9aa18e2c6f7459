"""Floor 1: the protocol, data model, graph files, embedded butler, report and errors.

Imports nothing else of zmpexec's.
"""
