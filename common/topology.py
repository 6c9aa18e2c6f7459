"""The shape of a quantum graph in flat arrays: quanta are 0..n-1, successors in CSR form, and
each quantum's depth (longest path from a root), which proves the graph acyclic: every edge
goes to a strictly greater depth. Knows nothing of quanta, files or names.

Arrays are ``array.array`` (compact, fast to index one by one in the broker's loop); numpy
views of them (``np.frombuffer``, no copy) do the bulk work of building and checking.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["CycleError", "Topology", "as_numpy"]

IntArray = npt.NDArray[np.int64]


class CycleError(ValueError):
    """The edges make a cycle; ``cycle`` lists its quanta in order."""

    def __init__(self, cycle: list[int]) -> None:
        super().__init__(f"cycle through {len(cycle)} quanta")
        self.cycle = cycle


def as_numpy(a: array[int] | array[float]) -> npt.NDArray[np.generic]:
    """A numpy view of ``a`` (no copy)."""
    dtype = {"i": np.int32, "I": np.uint32, "q": np.int64, "d": np.float64, "H": np.uint16}
    return np.frombuffer(a, dtype=dtype[a.typecode]) if len(a) else np.zeros(0, dtype[a.typecode])


def _array(code: str, values: npt.ArrayLike) -> array[int]:
    out: array[int] = array(code)
    dtype = {"i": np.int32, "q": np.int64}[code]
    out.frombytes(np.ascontiguousarray(values, dtype=dtype).tobytes())
    return out


@dataclass(frozen=True, slots=True)
class Topology:
    """``succ[succ_ptr[i]:succ_ptr[i + 1]]`` are quantum ``i``'s successors (no duplicates)."""

    succ_ptr: array[int]  # "q", n + 1 offsets
    succ: array[int]  # "i"
    depth: array[int]  # "i", longest path from a root, in edges

    @property
    def size(self) -> int:
        return len(self.depth)

    @property
    def edge_count(self) -> int:
        return len(self.succ)

    def successors(self, i: int) -> array[int]:
        return self.succ[self.succ_ptr[i] : self.succ_ptr[i + 1]]

    def edges(self) -> tuple[IntArray, IntArray]:
        """Every edge as (sources, targets)."""
        ptr = as_numpy(self.succ_ptr)
        src = np.repeat(np.arange(self.size, dtype=np.int64), np.diff(ptr))
        return src, as_numpy(self.succ).astype(np.int64)

    def predecessors(self) -> tuple[array[int], array[int]]:
        """(pred_ptr, pred) in the same CSR form: built on demand, not kept."""
        src, dst = self.edges()
        order = np.argsort(dst, kind="stable")
        ptr = np.zeros(self.size + 1, dtype=np.int64)
        np.cumsum(np.bincount(dst, minlength=self.size), out=ptr[1:])
        return _array("q", ptr), _array("i", src[order])

    def topological_order(self) -> IntArray:
        """Quanta by depth (parents before children), ties by index."""
        return np.argsort(as_numpy(self.depth), kind="stable").astype(np.int64)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_edges(cls, n: int, src: npt.ArrayLike, dst: npt.ArrayLike) -> Topology:
        """Build from edge lists (duplicates merged); CycleError if there is a cycle."""
        s = np.asarray(src, dtype=np.int64)
        d = np.asarray(dst, dtype=np.int64)
        if len(s):
            keys = np.unique(s * n + d)  # sorted by source, then target; duplicates gone
            s, d = keys // n, keys % n
        ptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(s, minlength=n), out=ptr[1:])
        succ_ptr, succ = _array("q", ptr), _array("i", d)
        return cls(succ_ptr, succ, _depths(n, succ_ptr, succ))

    @classmethod
    def from_arrays(cls, succ_ptr: array[int], succ: array[int], depth: array[int]) -> Topology:
        """Arrays read from a file: shapes and ranges checked, and ``depth`` recomputed if it
        does not prove the graph acyclic (CycleError if it is not). ValueError if malformed."""
        n = len(depth)
        ptr, targets = as_numpy(succ_ptr), as_numpy(succ)
        if len(ptr) != n + 1 or ptr[0] != 0 or ptr[-1] != len(targets):
            raise ValueError("successor offsets do not match the number of quanta or edges")
        if n and np.any(np.diff(ptr) < 0):
            raise ValueError("successor offsets are not ascending")
        if len(targets) and (targets.min() < 0 or targets.max() >= n):
            raise ValueError("an edge names a quantum index out of range")
        topo = cls(succ_ptr, succ, depth)
        src, dst = topo.edges()
        levels = np.asarray(as_numpy(depth), dtype=np.int64)
        if np.any(levels[src] >= levels[dst]):
            return cls.from_edges(n, src, dst)  # recompute; raises on a cycle
        return topo


def _depths(n: int, succ_ptr: array[int], succ: array[int]) -> array[int]:
    """Kahn's algorithm: each quantum's longest path from a root; CycleError if some quanta
    are never freed."""
    waiting = np.bincount(as_numpy(succ), minlength=n).tolist() if len(succ) else [0] * n
    depth = [0] * n
    stack = [i for i in range(n) if waiting[i] == 0]
    freed = 0
    while stack:
        i = stack.pop()
        freed += 1
        below = depth[i] + 1
        for j in succ[succ_ptr[i] : succ_ptr[i + 1]]:
            if depth[j] < below:
                depth[j] = below
            waiting[j] -= 1
            if waiting[j] == 0:
                stack.append(j)
    if freed < n:
        raise CycleError(_find_cycle([i for i in range(n) if waiting[i] > 0], succ_ptr, succ))
    return array("i", depth)


def _find_cycle(stuck: list[int], succ_ptr: array[int], succ: array[int]) -> list[int]:
    """A cycle among ``stuck`` (quanta Kahn could not free; every one has a stuck parent, so
    walking back from any of them must repeat)."""
    inside = set(stuck)
    parent: dict[int, int] = {}
    for i in stuck:
        for j in succ[succ_ptr[i] : succ_ptr[i + 1]]:
            if j in inside:
                parent.setdefault(j, i)
    seen: dict[int, int] = {}
    node = stuck[0]
    while node not in seen:
        seen[node] = len(seen)
        node = parent[node]
    walk = list(seen)[seen[node] :]
    return walk[::-1]  # parent links walk backwards: reverse into edge order
