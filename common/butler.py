"""The embedded data repository: a SQLite registry plus a file store, shared by every worker.

Writes are atomic (temp file, rename, then registry row): a crash never leaves a half-written
dataset registered. Pickles to its root path and run, so each process opens its own connection.
"""

from __future__ import annotations

import os
import pickle
import re
import sqlite3
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

from common.errors import ButlerError, DatasetNotFoundError

__all__ = ["Butler"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
    run TEXT NOT NULL,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (run, name)
)
"""
_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]")
_BUSY_TIMEOUT_S = 30.0


def _file_name(name: str) -> str:
    # Keep names readable but filesystem-safe; the registry holds the real name.
    safe = _UNSAFE.sub("_", name)[:150]
    return f"{safe}-{zlib.crc32(name.encode()):08x}.pkl" if safe != name else f"{safe}.pkl"


class Butler:
    """Datasets by name within a run, in the repository at ``root`` (created if missing)."""

    def __init__(self, root: str | os.PathLike[str], run: str = "main") -> None:
        if not run or "/" in run or run.startswith("."):
            raise ButlerError(f"invalid run name {run!r}")
        self.root = Path(root).resolve()
        self.run = run
        self._store = os.path.join(self.root, "store", run)  # str: pathlib costs 5 us a call
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        try:
            (self.root / "store" / run).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ButlerError(f"cannot create repository at {self.root}: {e}") from e
        self._connection()

    def __reduce__(self) -> tuple[Any, ...]:
        return (Butler, (str(self.root), self.run))

    def __repr__(self) -> str:
        return f"Butler({str(self.root)!r}, run={self.run!r})"

    def with_run(self, run: str) -> Butler:
        return Butler(self.root, run)

    def _connection(self) -> sqlite3.Connection:
        # A connection must never cross a fork: reopen in each process.
        if self._conn is None or self._pid != os.getpid():
            try:
                conn = sqlite3.connect(
                    self.root / "registry.sqlite3", timeout=_BUSY_TIMEOUT_S, isolation_level=None
                )
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute(_SCHEMA)
            except sqlite3.Error as e:
                raise ButlerError(f"cannot open registry in {self.root}: {e}") from e
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def close(self) -> None:
        """Close this process's registry connection (reopened if the butler is used again).

        Python's sqlite3 connections sit in a reference cycle, so without this their files stay
        open until a garbage collection: closed here, on ``with`` exit and when the butler is
        dropped."""
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None

    def __enter__(self) -> Butler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to release
            pass

    def put(self, name: str, value: object, *, replace: bool = False) -> None:
        """Store ``value`` as dataset ``name``; refuse to overwrite unless ``replace``."""
        if not replace and self.exists(name):
            raise ButlerError(f"dataset {name!r} already exists in run {self.run!r}")
        store = self.root / "store" / self.run
        final = store / _file_name(name)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=store)
        try:
            with os.fdopen(fd, "wb") as f:
                pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
                size = f.tell()
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        try:
            self._connection().execute(
                "INSERT OR REPLACE INTO datasets VALUES (?, ?, ?, ?, ?)",
                (self.run, name, final.name, size, time.time()),
            )
        except sqlite3.Error as e:
            raise ButlerError(f"cannot register dataset {name!r}: {e}") from e

    def remove_partial_writes(self) -> int:
        """Delete the temporary files of writes that were killed before their rename (they
        were never registered); how many. For the start of a run, when no write of this run
        collection is under way."""
        removed = 0
        for tmp in Path(self._store).glob(".tmp-*"):
            try:
                tmp.unlink()
            except FileNotFoundError:
                continue
            removed += 1
        return removed

    def get(self, name: str) -> Any:
        path = self._path(name)
        if path is None:
            raise DatasetNotFoundError(f"dataset {name!r} not found in run {self.run!r}")
        try:
            with open(path, "rb") as f:
                return pickle.load(f)
        except FileNotFoundError as e:
            raise ButlerError(f"dataset {name!r} is registered but its file is missing") from e

    def exists(self, name: str) -> bool:
        row = self._row(name)
        return row is not None and os.path.exists(os.path.join(self._store, row[0]))

    def names(self) -> list[str]:
        rows = self._connection().execute(
            "SELECT name FROM datasets WHERE run = ? ORDER BY name", (self.run,)
        )
        return [r[0] for r in rows]

    def _row(self, name: str) -> tuple[str] | None:
        row: tuple[str] | None = (
            self._connection()
            .execute("SELECT path FROM datasets WHERE run = ? AND name = ?", (self.run, name))
            .fetchone()
        )
        return row

    def _path(self, name: str) -> Path | None:
        row = self._row(name)
        return None if row is None else Path(self._store) / row[0]
