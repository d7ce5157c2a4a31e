"""The node's ledger: signed records, countersigned receipts, channel cache, claims, leases.

``LedgerStore`` is the interface; ``SqliteLedger`` the embedded default (one process),
``PostgresLedger`` the store several replicas share. ``open_ledger`` picks one from a URL.
"""

from __future__ import annotations

from pathlib import Path

from ._base import SqlLedger
from ._postgres import PostgresLedger
from ._sqlite import SqliteLedger
from ._store import Book, ClaimItem, ClaimRow, LedgerStore, UsageRow

__all__ = [
    "Book",
    "ClaimItem",
    "ClaimRow",
    "LedgerStore",
    "PostgresLedger",
    "SqlLedger",
    "SqliteLedger",
    "UsageRow",
    "is_postgres_url",
    "open_ledger",
]


def is_postgres_url(location: str | Path) -> bool:
    return str(location).startswith(("postgresql://", "postgres://"))


def open_ledger(location: str | Path) -> LedgerStore:
    """A ``postgresql://`` URL opens ``PostgresLedger``; anything else is a SQLite file path."""
    if is_postgres_url(location):
        return PostgresLedger(str(location))
    return SqliteLedger(location)
