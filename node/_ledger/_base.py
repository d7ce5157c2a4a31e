"""The SQL both stores share: ``SqlLedger`` implements ``LedgerStore`` (``_store.py``).

It implements the interface once over a DB-API connection; a store adds its dialect (schema,
how a transaction begins, how one channel is locked). SQL here is written with ``?``
placeholders and in the dialect both SQLite (>= 3.35) and PostgreSQL understand
(``ON CONFLICT``, ``RETURNING``, row-value ``IN``).

Transactions nest: a call made inside ``channel_lock()`` by the same thread joins its
transaction, so the gate reads a channel's book and writes its record atomically while the
database holds that channel for it (other processes wait at the lock, not just other tasks).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from tallystick.protocol import (
    ChannelState,
    ChannelStatus,
    Prices,
    Receipt,
    SignedReceipt,
    SignedUsageRecord,
    UsageRecord,
)

from .._types import StoredReceipt, StoredRecord
from ._store import Book, ClaimItem, ClaimRow, UsageRow

__all__ = ["SqlLedger"]


class SqlLedger:
    """``LedgerStore`` over one connection; subclasses supply the dialect hooks below."""

    url: str

    def __init__(self) -> None:
        # One connection per process, shared by the event loop and worker threads.
        self._lock = threading.RLock()
        self._depth = 0

    # dialect hooks -------------------------------------------------------------------------

    def _begin(self) -> None:
        raise NotImplementedError

    def _lock_channel(self, channel_id: bytes) -> None:
        raise NotImplementedError

    def _commit(self) -> None:
        raise NotImplementedError

    def _rollback(self) -> None:
        raise NotImplementedError

    def _execute(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        raise NotImplementedError  # a cursor

    def _executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        raise NotImplementedError

    # transactions --------------------------------------------------------------------------

    @contextmanager
    def _tx(self, channel_id: bytes | None = None) -> Iterator[None]:
        with self._lock:
            outer = self._depth == 0
            if outer:
                self._begin()
            self._depth += 1
            try:
                if channel_id is not None:
                    self._lock_channel(channel_id)
                yield
            except BaseException:
                self._depth -= 1
                if outer:
                    self._rollback()
                raise
            self._depth -= 1
            if outer:
                self._commit()

    def channel_lock(self, channel_id: bytes) -> AbstractContextManager[None]:
        """A transaction that holds ``channel_id`` against every other process and thread."""
        return self._tx(channel_id)

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._execute(sql, args).fetchall())

    # the book (§8.1 across replicas) -------------------------------------------------------

    def book(self, channel_id: bytes) -> Book:
        # Two round trips (the last record, then everything else in one row): a replica pays
        # each one to the database server on every request.
        with self._tx():
            last = self.last_record(channel_id)
            row = self._read(_BOOK_SQL, (channel_id,) * 5)[0]
        countersigned, in_flight, reserved_input, reserved_output, closing = row
        return Book(
            last,
            int(countersigned or 0),
            int(in_flight),
            int(reserved_input),
            int(reserved_output),
            bool(closing),
        )

    def add_reservation(self, channel_id: bytes, owner: str, prompt: int, max_tokens: int) -> int:
        with self._tx():
            row = self._execute(
                "INSERT INTO reservations (channel_id, owner, prompt, max_tokens) "
                "VALUES (?, ?, ?, ?) RETURNING id",
                (channel_id, owner, prompt, max_tokens),
            ).fetchone()
        return int(row[0])

    def drop_reservation(self, reservation_id: int) -> None:
        with self._tx():
            self._execute("DELETE FROM reservations WHERE id = ?", (reservation_id,))

    def set_closing(self, channel_id: bytes) -> None:
        with self._tx():
            self._execute(
                "INSERT INTO closing VALUES (?) ON CONFLICT (channel_id) DO NOTHING", (channel_id,)
            )

    def heartbeat(self, owner: str, now: float, ttl: float) -> None:
        """``owner`` is alive; forget the reservations of replicas silent for ``ttl`` seconds."""
        with self._tx():
            self._execute(
                "INSERT INTO replicas VALUES (?, ?) "
                "ON CONFLICT (owner) DO UPDATE SET seen_at = excluded.seen_at",
                (owner, now),
            )
            dead = "SELECT owner FROM replicas WHERE seen_at < ?"
            self._execute(f"DELETE FROM reservations WHERE owner IN ({dead})", (now - ttl,))
            self._execute("DELETE FROM replicas WHERE seen_at < ?", (now - ttl,))

    def acquire_lease(self, name: str, owner: str, now: float, ttl: float) -> bool:
        """Take or renew the lease ``name`` for ``ttl`` seconds; False while another holds it."""
        with self._tx():
            self._execute(
                "INSERT INTO leases VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE "
                "SET owner = excluded.owner, expires_at = excluded.expires_at "
                "WHERE leases.owner = excluded.owner OR leases.expires_at < ?",
                (name, owner, now + ttl, now),
            )
            holder = self._read("SELECT owner FROM leases WHERE name = ?", (name,))
        return bool(holder) and holder[0][0] == owner

    def release_lease(self, name: str, owner: str) -> None:
        with self._tx():
            self._execute("DELETE FROM leases WHERE name = ? AND owner = ?", (name, owner))

    # records -------------------------------------------------------------------------------

    def add_record(self, stored: StoredRecord) -> None:
        rec = stored.signed.record
        with self._tx():
            self._execute(
                "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                    json.dumps(stored.proof),
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

    def usage_since(self, since: float) -> list[UsageRow]:
        """Every record signed at or after ``since`` (unix seconds), oldest first."""
        rows = self._read(
            "SELECT channel_id, seq, model, created_at, record, timings FROM records "
            "WHERE created_at >= ? ORDER BY created_at, channel_id, seq",
            (since,),
        )
        return [_usage(row) for row in rows]

    # receipts ------------------------------------------------------------------------------

    def add_receipt(self, stored: StoredReceipt) -> None:
        r = stored.signed.receipt
        with self._tx():
            self._execute(
                "INSERT INTO receipts VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
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

    def put_channel(self, info: ChannelState) -> None:
        self.put_channels([info])

    def put_channels(self, infos: list[ChannelState]) -> None:
        """Several channels in one transaction (one fsync for a whole settlement pass)."""
        now = time.time()
        with self._tx():
            self._executemany(_PUT_CHANNEL_SQL, [_channel_row(info, now) for info in infos])

    def get_channel(self, channel_id: bytes) -> ChannelState | None:
        rows = self._read(_CHANNEL_SQL + " WHERE channel_id = ?", (channel_id,))
        return _channel(rows[0]) if rows else None

    def channels(self) -> list[ChannelState]:
        return [_channel(row) for row in self._read(_CHANNEL_SQL + " ORDER BY updated_at")]

    # claims --------------------------------------------------------------------------------

    def add_claim(self, items: list[ClaimItem]) -> int:
        with self._tx():
            row = self._execute(
                "INSERT INTO claims (status, created_at) VALUES ('pending', ?) RETURNING claim_id",
                (time.time(),),
            ).fetchone()
            claim_id = int(row[0])
            self._executemany(
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
        with self._tx():
            self._execute(
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
            self._execute(
                "UPDATE claim_items SET status = ? WHERE claim_id = ?", (item_status, claim_id)
            )
            for channel_id, reason in skipped.items():
                self._execute(
                    "UPDATE claim_items SET status = 'skipped', reason = ? "
                    "WHERE claim_id = ? AND channel_id = ?",
                    (reason, claim_id, channel_id),
                )

    def set_claim_status(self, claim_id: int, status: str) -> None:
        """A mined claim became "final" (deep enough) or was "reorged" (dropped)."""
        with self._tx():
            self._execute("UPDATE claims SET status = ? WHERE claim_id = ?", (status, claim_id))

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
        with self._tx():
            self._execute(
                "INSERT INTO meta VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )


_BOOK_SQL = (
    "SELECT (SELECT MAX(seq) FROM receipts WHERE channel_id = ?), "
    "(SELECT COUNT(*) FROM reservations WHERE channel_id = ?), "
    "(SELECT COALESCE(SUM(prompt), 0) FROM reservations WHERE channel_id = ?), "
    "(SELECT COALESCE(SUM(max_tokens), 0) FROM reservations WHERE channel_id = ?), "
    "(SELECT COUNT(*) FROM closing WHERE channel_id = ?)"
)
_RECORD_SQL = (
    "SELECT record, signature, completion_ids, model, created_at, timings, proof FROM records"
)
_RECEIPT_SQL = (
    "SELECT channel_id, seq, input_tokens, output_tokens, usage_root, signature, received_at "
    "FROM receipts"
)
_CHANNEL_COLUMNS = (
    "channel_id, client, provider, token, status, model_id, input_price, output_price, "
    "deposit, paid, claimed_input, claimed_output, closes_at, session_key"
)
_CHANNEL_SQL = f"SELECT {_CHANNEL_COLUMNS} FROM channels"
_PUT_CHANNEL_SQL = (
    f"INSERT INTO channels ({_CHANNEL_COLUMNS}, updated_at) VALUES "
    "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (channel_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in (_CHANNEL_COLUMNS + ", updated_at").split(", ")[1:])
)


def _record(row: tuple[Any, ...]) -> StoredRecord:
    record = UsageRecord.from_json(json.loads(row[0]))
    return StoredRecord(
        signed=SignedUsageRecord(record, bytes(row[1])),
        completion_ids=json.loads(row[2]),
        model=row[3],
        created_at=row[4],
        timings=json.loads(row[5]) if row[5] else {},
        proof=json.loads(row[6]) if row[6] else [],
    )


def _usage(row: tuple[Any, ...]) -> UsageRow:
    record = UsageRecord.from_json(json.loads(row[4]))
    return UsageRow(
        channel_id=bytes(row[0]),
        seq=row[1],
        model=row[2],
        created_at=row[3],
        prompt_tokens=record.prompt_tokens,
        completion_tokens=record.completion_tokens,
        input_tokens=record.input_tokens,
        output_tokens=record.output_tokens,
        timings=json.loads(row[5]) if row[5] else {},
    )


def _receipt(row: tuple[Any, ...]) -> StoredReceipt:
    receipt = Receipt(bytes(row[0]), row[2], row[3], bytes(row[4]))
    return StoredReceipt(SignedReceipt(receipt, bytes(row[5])), seq=row[1], received_at=row[6])


def _channel_row(info: ChannelState, now: float) -> tuple[Any, ...]:
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


def _channel(row: tuple[Any, ...]) -> ChannelState:
    return ChannelState(
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
