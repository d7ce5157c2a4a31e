"""The node's ledger: signed records, countersigned receipts, channel cache and claims.

``LedgerStore`` is the small interface the app and the settlement worker use, so a
PostgreSQL store can implement it later for several replicas. ``SqliteLedger`` is the default:
one connection in WAL mode with ``synchronous=FULL`` (a commit is fsync'd before it returns,
so a receipt acknowledged over HTTP survives a crash), writes serialised by a lock.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tallystick.protocol import Prices, Receipt, SignedReceipt, SignedUsageRecord, UsageRecord

from ._types import ChannelInfo, ChannelStatus, StoredReceipt, StoredRecord

__all__ = ["ClaimItem", "ClaimRow", "LedgerStore", "SqliteLedger"]


@dataclass(frozen=True)
class ClaimItem:
    """One receipt in a claim and what happened to it ("pending", "claimed" or "skipped")."""

    channel_id: bytes
    seq: int
    input_tokens: int
    output_tokens: int
    status: str
    reason: str | None = None


@dataclass(frozen=True)
class ClaimRow:
    """A ``claimMany`` transaction the worker sent."""

    claim_id: int
    tx_hash: str | None
    status: str  # "pending", "confirmed", "failed"
    created_at: float
    gas_used: int | None
    amount: int | None
    error: str | None
    items: tuple[ClaimItem, ...]


class LedgerStore(Protocol):
    """What the node keeps on disk; every write is durable when the call returns."""

    def add_record(self, stored: StoredRecord) -> None: ...
    def get_record(self, channel_id: bytes, seq: int) -> StoredRecord | None: ...
    def last_record(self, channel_id: bytes) -> StoredRecord | None: ...
    def find_record(self, channel_id: bytes, usage_root: bytes) -> StoredRecord | None: ...
    def add_receipt(self, stored: StoredReceipt) -> None: ...
    def last_receipt(self, channel_id: bytes) -> StoredReceipt | None: ...
    def latest_receipts(self) -> list[StoredReceipt]: ...
    def put_channel(self, info: ChannelInfo) -> None: ...
    def put_channels(self, infos: list[ChannelInfo]) -> None: ...
    def get_channel(self, channel_id: bytes) -> ChannelInfo | None: ...
    def channels(self) -> list[ChannelInfo]: ...
    def add_claim(self, items: list[ClaimItem]) -> int: ...
    def finish_claim(
        self,
        claim_id: int,
        *,
        status: str,
        tx_hash: str | None = None,
        gas_used: int | None = None,
        amount: int | None = None,
        error: str | None = None,
        skipped: dict[bytes, str] | None = None,
    ) -> None: ...
    def claims(self, limit: int = 100) -> list[ClaimRow]: ...
    def get_meta(self, key: str) -> str | None: ...
    def set_meta(self, key: str, value: str) -> None: ...
    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS channels (
    channel_id BLOB PRIMARY KEY, client TEXT NOT NULL, provider TEXT NOT NULL,
    token TEXT NOT NULL, status INTEGER NOT NULL, model_id BLOB NOT NULL,
    input_price TEXT NOT NULL, output_price TEXT NOT NULL, deposit TEXT NOT NULL,
    paid TEXT NOT NULL, claimed_input INTEGER NOT NULL, claimed_output INTEGER NOT NULL,
    closes_at INTEGER NOT NULL, session_key TEXT, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    channel_id BLOB NOT NULL, seq INTEGER NOT NULL, record TEXT NOT NULL,
    signature BLOB NOT NULL, usage_root BLOB NOT NULL, completion_ids TEXT NOT NULL,
    model TEXT NOT NULL, created_at REAL NOT NULL, timings TEXT,
    PRIMARY KEY (channel_id, seq));
CREATE UNIQUE INDEX IF NOT EXISTS records_root ON records (channel_id, usage_root);
CREATE TABLE IF NOT EXISTS receipts (
    channel_id BLOB NOT NULL, seq INTEGER NOT NULL, input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL, usage_root BLOB NOT NULL, signature BLOB NOT NULL,
    received_at REAL NOT NULL, PRIMARY KEY (channel_id, seq));
CREATE TABLE IF NOT EXISTS claims (
    claim_id INTEGER PRIMARY KEY AUTOINCREMENT, tx_hash TEXT, status TEXT NOT NULL,
    created_at REAL NOT NULL, gas_used INTEGER, amount TEXT, error TEXT);
CREATE TABLE IF NOT EXISTS claim_items (
    claim_id INTEGER NOT NULL, channel_id BLOB NOT NULL, seq INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL, status TEXT NOT NULL,
    reason TEXT, PRIMARY KEY (claim_id, channel_id));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class SqliteLedger:
    """``LedgerStore`` on one SQLite file (``":memory:"`` for tests)."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        # One connection shared by the event loop and worker threads; the lock serialises it.
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        # Ledgers written before records kept their timings: add the column (NULL = none).
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(records)")}
        if "timings" not in columns:
            self._db.execute("ALTER TABLE records ADD COLUMN timings TEXT")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # records -------------------------------------------------------------------------------

    def add_record(self, stored: StoredRecord) -> None:
        rec = stored.signed.record
        with self._write() as db:
            db.execute(
                "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    rec.channel_id,
                    rec.seq,
                    json.dumps(rec.to_json()),
                    stored.signed.signature,
                    stored.usage_root,
                    json.dumps(stored.completion_ids),
                    stored.model,
                    stored.created_at,
                    json.dumps(stored.timings),
                ),
            )

    def get_record(self, channel_id: bytes, seq: int) -> StoredRecord | None:
        rows = self._read(_RECORD_SQL + " WHERE channel_id = ? AND seq = ?", (channel_id, seq))
        return _record(rows[0]) if rows else None

    def last_record(self, channel_id: bytes) -> StoredRecord | None:
        sql = _RECORD_SQL + " WHERE channel_id = ? ORDER BY seq DESC LIMIT 1"
        rows = self._read(sql, (channel_id,))
        return _record(rows[0]) if rows else None

    def find_record(self, channel_id: bytes, usage_root: bytes) -> StoredRecord | None:
        sql = _RECORD_SQL + " WHERE channel_id = ? AND usage_root = ?"
        rows = self._read(sql, (channel_id, usage_root))
        return _record(rows[0]) if rows else None

    # receipts ------------------------------------------------------------------------------

    def add_receipt(self, stored: StoredReceipt) -> None:
        r = stored.signed.receipt
        with self._write() as db:
            db.execute(
                "INSERT OR IGNORE INTO receipts VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    r.channel_id,
                    stored.seq,
                    r.input_tokens,
                    r.output_tokens,
                    r.usage_root,
                    stored.signed.signature,
                    stored.received_at,
                ),
            )

    def last_receipt(self, channel_id: bytes) -> StoredReceipt | None:
        sql = _RECEIPT_SQL + " WHERE channel_id = ? ORDER BY seq DESC LIMIT 1"
        rows = self._read(sql, (channel_id,))
        return _receipt(rows[0]) if rows else None

    def latest_receipts(self) -> list[StoredReceipt]:
        sql = (
            _RECEIPT_SQL + " WHERE (channel_id, seq) IN "
            "(SELECT channel_id, MAX(seq) FROM receipts GROUP BY channel_id)"
        )
        return [_receipt(row) for row in self._read(sql)]

    # channels ------------------------------------------------------------------------------

    def put_channel(self, info: ChannelInfo) -> None:
        self.put_channels([info])

    def put_channels(self, infos: list[ChannelInfo]) -> None:
        """Several channels in one transaction (one fsync for a whole settlement pass)."""
        now = time.time()
        with self._write() as db:
            db.executemany(
                "INSERT OR REPLACE INTO channels VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [_channel_row(info, now) for info in infos],
            )

    def get_channel(self, channel_id: bytes) -> ChannelInfo | None:
        rows = self._read(_CHANNEL_SQL + " WHERE channel_id = ?", (channel_id,))
        return _channel(rows[0]) if rows else None

    def channels(self) -> list[ChannelInfo]:
        return [_channel(row) for row in self._read(_CHANNEL_SQL + " ORDER BY updated_at")]

    # claims --------------------------------------------------------------------------------

    def add_claim(self, items: list[ClaimItem]) -> int:
        with self._write() as db:
            cur = db.execute(
                "INSERT INTO claims (status, created_at) VALUES ('pending', ?)", (time.time(),)
            )
            claim_id = int(cur.lastrowid or 0)
            db.executemany(
                "INSERT INTO claim_items VALUES (?, ?, ?, ?, ?, 'pending', NULL)",
                [(claim_id, i.channel_id, i.seq, i.input_tokens, i.output_tokens) for i in items],
            )
        return claim_id

    def finish_claim(
        self,
        claim_id: int,
        *,
        status: str,
        tx_hash: str | None = None,
        gas_used: int | None = None,
        amount: int | None = None,
        error: str | None = None,
        skipped: dict[bytes, str] | None = None,
    ) -> None:
        skipped = skipped or {}
        item_status = "claimed" if status == "confirmed" else "failed"
        with self._write() as db:
            db.execute(
                "UPDATE claims SET status = ?, tx_hash = ?, gas_used = ?, amount = ?, error = ? "
                "WHERE claim_id = ?",
                (
                    status,
                    tx_hash,
                    gas_used,
                    None if amount is None else str(amount),
                    error,
                    claim_id,
                ),
            )
            db.execute(
                "UPDATE claim_items SET status = ? WHERE claim_id = ?", (item_status, claim_id)
            )
            for channel_id, reason in skipped.items():
                db.execute(
                    "UPDATE claim_items SET status = 'skipped', reason = ? "
                    "WHERE claim_id = ? AND channel_id = ?",
                    (reason, claim_id, channel_id),
                )

    def claims(self, limit: int = 100) -> list[ClaimRow]:
        rows = self._read(
            "SELECT claim_id, tx_hash, status, created_at, gas_used, amount, error FROM claims "
            "ORDER BY claim_id DESC LIMIT ?",
            (limit,),
        )
        return [self._claim(row) for row in rows]

    def _claim(self, row: tuple[Any, ...]) -> ClaimRow:
        items = self._read(
            "SELECT channel_id, seq, input_tokens, output_tokens, status, reason "
            "FROM claim_items WHERE claim_id = ?",
            (row[0],),
        )
        return ClaimRow(
            claim_id=row[0],
            tx_hash=row[1],
            status=row[2],
            created_at=row[3],
            gas_used=row[4],
            amount=None if row[5] is None else int(row[5]),
            error=row[6],
            items=tuple(ClaimItem(bytes(i[0]), i[1], i[2], i[3], i[4], i[5]) for i in items),
        )

    # meta ----------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def close(self) -> None:
        with self._lock:
            self._db.close()


_RECORD_SQL = "SELECT record, signature, completion_ids, model, created_at, timings FROM records"
_RECEIPT_SQL = (
    "SELECT channel_id, seq, input_tokens, output_tokens, usage_root, signature, received_at "
    "FROM receipts"
)
_CHANNEL_SQL = (
    "SELECT channel_id, client, provider, token, status, model_id, input_price, output_price, "
    "deposit, paid, claimed_input, claimed_output, closes_at, session_key FROM channels"
)


def _record(row: tuple[Any, ...]) -> StoredRecord:
    record = UsageRecord.from_json(json.loads(row[0]))
    return StoredRecord(
        signed=SignedUsageRecord(record, bytes(row[1])),
        completion_ids=json.loads(row[2]),
        model=row[3],
        created_at=row[4],
        timings=json.loads(row[5]) if row[5] else {},
    )


def _receipt(row: tuple[Any, ...]) -> StoredReceipt:
    receipt = Receipt(bytes(row[0]), row[2], row[3], bytes(row[4]))
    return StoredReceipt(SignedReceipt(receipt, bytes(row[5])), seq=row[1], received_at=row[6])


def _channel_row(info: ChannelInfo, now: float) -> tuple[Any, ...]:
    return (
        info.channel_id,
        info.client,
        info.provider,
        info.token,
        int(info.status),
        info.model_id,
        str(info.prices.input_per_m),
        str(info.prices.output_per_m),
        str(info.deposit),
        str(info.paid),
        info.claimed_input,
        info.claimed_output,
        info.closes_at,
        info.session_key,
        now,
    )


def _channel(row: tuple[Any, ...]) -> ChannelInfo:
    return ChannelInfo(
        channel_id=bytes(row[0]),
        client=row[1],
        provider=row[2],
        token=row[3],
        status=ChannelStatus(row[4]),
        model_id=bytes(row[5]),
        prices=Prices(int(row[6]), int(row[7])),
        deposit=int(row[8]),
        paid=int(row[9]),
        claimed_input=row[10],
        claimed_output=row[11],
        closes_at=row[12],
        session_key=row[13],
    )
