"""``SqliteTables``: one SQLite file for durable writes, the base of the store and the gateway's
ledger (``client/_gateway/_ledger.py``)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ._errors import StoreError

__all__ = ["SqliteTables"]


class SqliteTables:
    """One SQLite file for durable writes (WAL, synchronous FULL): thread-safe, every write one
    transaction (``_tx``), reads through ``_query``. The store and the gateway's ledger share it."""

    def __init__(
        self, path: str | Path, schema: str, *, what: str, busy_timeout_ms: int | None = None
    ) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            if busy_timeout_ms is not None:
                self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a receipt must survive a power cut
            self._db.executescript(schema)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open {what} {self.path}: {exc}") from exc
        self._lock = threading.RLock()

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            cur = self._db.execute(sql, args)
            cur.row_factory = sqlite3.Row
            return list(cur.fetchall())
