"""Where each worker's executor child is reached (its route: a link for a local worker, a
ZeroMQ routing identity for an attached one) and whose child each route is. Bookkeeping
only: it sends nothing."""

from __future__ import annotations

from broker.transport.links import Link

__all__ = ["ChildRoutes", "Route"]

Route = bytes | Link


class ChildRoutes:
    """The current child of each worker, and the worker and child generation behind every
    route seen: a dead child's route stays known until its successor dies, so the results it
    sent last are still its worker's."""

    def __init__(self) -> None:
        self._current: dict[bytes, tuple[Route, int]] = {}
        self._owner: dict[Route, tuple[bytes, int]] = {}

    def attach(self, worker: bytes, route: Route, generation: int) -> None:
        """Child ``generation`` of ``worker`` said READY on ``route``. (A worker serving quanta
        on its own socket is its own child: its route is its identity.)"""
        self._current[worker] = (route, generation)
        if route != worker:
            self._owner[route] = (worker, generation)

    def current(self, worker: bytes) -> tuple[Route, int] | None:
        return self._current.get(worker)

    def owner(self, route: Route) -> bytes | None:
        """The worker whose child speaks on ``route`` (None: not a child's route)."""
        owner = self._owner.get(route)
        return owner[0] if owner is not None else None

    def closed(self, route: Route) -> tuple[bytes, int] | None:
        """``route`` ended; (worker, generation) if it was that worker's current child."""
        owner = self._owner.pop(route, None)
        if owner is None:
            return None
        current = self._current.get(owner[0])
        return owner if current is not None and current[0] is route else None

    def forget(self, worker: bytes, older_than: int | None = None) -> None:
        """Drop the routes of ``worker``'s children older than generation ``older_than``
        (all of them, and the worker, when None)."""
        for route, (owner, generation) in list(self._owner.items()):
            if owner == worker and (older_than is None or generation < older_than):
                del self._owner[route]
        if older_than is None:
            self._current.pop(worker, None)
