"""The client's SQLite store: channels, their countersigned state, every verified request, disputes.

(Just over 450 lines: the tables and their transactions stay together; the record types are
in _types and the SQLite base in _sqlite.)

One file per client (WAL mode). A receipt is written here, in the same transaction as the
record it covers, before it is handed to the node, so a restarted client continues exactly
where it stopped; the write refuses any receipt whose totals are lower than the stored ones.
A request is written as *pending* before it is sent, so a request that ends without a
verified record (dropped stream, crash) is resolved from the node's record on the next use.

Session keys are kept here in the clear, and the file is made owner-only (0600) when the
first one is written. That is deliberate: a session key can only sign receipts of the one
channel it is bound to, and such a receipt can only pay that channel's provider, up to that
channel's deposit; a thief gains nothing from it. The wallet's own key is never stored here.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from tallystick.protocol import (
    ZERO_ROOT,
    ChannelStatus,
    Prices,
    Receipt,
    SignedReceipt,
    SignedUsageRecord,
    UsageRecord,
)

from ._errors import ChannelNotFound, StoreError
from ._sqlite import SqliteTables
from ._types import BillLine, ChannelTally, Dispute, LockHolder, OpenChannel, Pending

__all__ = ["Store"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS channels (
    id TEXT PRIMARY KEY, chain_id INTEGER NOT NULL, escrow TEXT NOT NULL, client TEXT NOT NULL,
    provider TEXT NOT NULL, endpoint TEXT NOT NULL, model TEXT NOT NULL, token TEXT NOT NULL,
    input_price INTEGER NOT NULL, output_price INTEGER NOT NULL, deposit TEXT NOT NULL,
    tokenizer_hash TEXT NOT NULL, context_length INTEGER NOT NULL, status TEXT NOT NULL,
    opened_at REAL NOT NULL, model_hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS channel_state (
    channel_id TEXT PRIMARY KEY REFERENCES channels(id), seq INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL, usage_root TEXT NOT NULL,
    receipt_signature TEXT, delivered INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS requests (
    channel_id TEXT NOT NULL REFERENCES channels(id), seq INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, cost INTEGER NOT NULL,
    record TEXT NOT NULL, signature TEXT NOT NULL, created_at REAL NOT NULL,
    PRIMARY KEY (channel_id, seq)
);
CREATE TABLE IF NOT EXISTS pending (
    channel_id TEXT PRIMARY KEY REFERENCES channels(id), seq INTEGER NOT NULL,
    served TEXT NOT NULL, received INTEGER NOT NULL, created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS session_keys (
    address TEXT PRIMARY KEY, key TEXT NOT NULL, channel_id TEXT, created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS channel_locks (
    channel_id TEXT PRIMARY KEY, owner TEXT NOT NULL, pid INTEGER NOT NULL, host TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS disputes (
    id INTEGER PRIMARY KEY AUTOINCREMENT, channel_id TEXT NOT NULL, seq INTEGER,
    mismatches TEXT NOT NULL, evidence TEXT NOT NULL, created_at REAL NOT NULL
);
"""


class Store(SqliteTables):
    """A thread-safe SQLite store; every write is one transaction."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, _SCHEMA, what="store")

    # channels

    def add_channel(self, info: OpenChannel) -> None:
        """Record a newly opened channel with an empty tally."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO channels VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    info.hex_id,
                    info.chain_id,
                    info.escrow,
                    info.client,
                    info.provider,
                    info.endpoint,
                    info.model,
                    info.token,
                    info.prices.input_per_m,
                    info.prices.output_per_m,
                    str(info.deposit),
                    "0x" + info.tokenizer_hash.hex(),
                    info.context_length,
                    info.status.label,
                    time.time(),
                    "0x" + info.model_hash.hex(),
                ),
            )
            db.execute(
                "INSERT INTO channel_state VALUES (?,0,0,0,?,NULL,1)",
                (info.hex_id, "0x" + ZERO_ROOT.hex()),
            )

    def update_channel(
        self,
        channel_id: bytes,
        *,
        deposit: int | None = None,
        status: ChannelStatus | None = None,
    ) -> None:
        """Set a channel's deposit and/or status (after a confirmed transaction)."""
        self.channel(channel_id)
        with self._tx() as db:
            if deposit is not None:
                db.execute(
                    "UPDATE channels SET deposit=? WHERE id=?", (str(deposit), _hex_id(channel_id))
                )
            if status is not None:
                db.execute(
                    "UPDATE channels SET status=? WHERE id=?", (status.label, _hex_id(channel_id))
                )

    def channel(self, channel_id: bytes) -> OpenChannel:
        rows = self._query("SELECT * FROM channels WHERE id=?", (_hex_id(channel_id),))
        if not rows:
            raise ChannelNotFound(f"channel {_hex_id(channel_id)} is not in the store {self.path}")
        return _channel(rows[0])

    def channels(
        self, *, status: ChannelStatus | None = None, model: str | None = None
    ) -> list[OpenChannel]:
        """Channels, newest first, optionally filtered by status and model."""
        rows = self._query("SELECT * FROM channels ORDER BY opened_at DESC")
        infos = [_channel(r) for r in rows]
        return [
            c
            for c in infos
            if (status is None or c.status == status) and (model is None or c.model == model)
        ]

    # tallies and receipts

    def tally(self, channel_id: bytes) -> ChannelTally:
        rows = self._query("SELECT * FROM channel_state WHERE channel_id=?", (_hex_id(channel_id),))
        if not rows:
            raise ChannelNotFound(f"channel {_hex_id(channel_id)} is not in the store {self.path}")
        return _tally(rows[0])

    def record_verified(self, signed: SignedUsageRecord, receipt: SignedReceipt, cost: int) -> None:
        """Store a verified request and the receipt that countersigns it, atomically.

        Refuses (``StoreError``) a receipt that does not follow the stored state: seq must be
        the next one and totals must not decrease, so the client never signs lower totals.
        """
        record = signed.record
        cid = _hex_id(record.channel_id)
        with self._tx() as db:
            row = db.execute(
                "SELECT seq, input_tokens, output_tokens FROM channel_state WHERE channel_id=?",
                (cid,),
            ).fetchone()
            if row is None:
                raise ChannelNotFound(f"channel {cid} is not in the store {self.path}")
            _check_follows(row, record.seq, receipt)
            db.execute("DELETE FROM pending WHERE channel_id=? AND seq=?", (cid, record.seq))
            db.execute(
                "INSERT INTO requests VALUES (?,?,?,?,?,?,?,?)",
                (
                    cid,
                    record.seq,
                    record.prompt_tokens,
                    record.completion_tokens,
                    cost,
                    json.dumps(record.to_json()),
                    "0x" + signed.signature.hex(),
                    time.time(),
                ),
            )
            db.execute(
                "UPDATE channel_state SET seq=?, input_tokens=?, output_tokens=?, usage_root=?,"
                " receipt_signature=?, delivered=0 WHERE channel_id=?",
                (
                    record.seq,
                    receipt.receipt.input_tokens,
                    receipt.receipt.output_tokens,
                    "0x" + receipt.receipt.usage_root.hex(),
                    "0x" + receipt.signature.hex(),
                    cid,
                ),
            )

    def mark_delivered(self, channel_id: bytes, seq: int) -> None:
        """The node acknowledged the receipt of ``seq`` (a later seq stays undelivered)."""
        with self._tx() as db:
            db.execute(
                "UPDATE channel_state SET delivered=1 WHERE channel_id=? AND seq=?",
                (_hex_id(channel_id), seq),
            )

    def bill(self, channel_id: bytes) -> list[BillLine]:
        rows = self._query(
            "SELECT * FROM requests WHERE channel_id=? ORDER BY seq", (_hex_id(channel_id),)
        )
        return [_bill_line(r) for r in rows]

    # pending requests

    def set_pending(
        self, channel_id: bytes, seq: int, served: dict[str, Any], *, received: bool = False
    ) -> None:
        """Record (or update) the request ``seq`` as sent and not yet resolved."""
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO pending VALUES (?,?,?,?,?)",
                (_hex_id(channel_id), seq, json.dumps(served), int(received), time.time()),
            )

    def pending(self, channel_id: bytes) -> Pending | None:
        rows = self._query("SELECT * FROM pending WHERE channel_id=?", (_hex_id(channel_id),))
        if not rows:
            return None
        r = rows[0]
        served = json.loads(r["served"])
        return Pending(channel_id, r["seq"], served, bool(r["received"]), r["created_at"])

    def clear_pending(self, channel_id: bytes, seq: int | None = None) -> None:
        """Forget the pending request ``seq`` (any, if None): it was refused or disputed."""
        with self._tx() as db:
            if seq is None:
                db.execute("DELETE FROM pending WHERE channel_id=?", (_hex_id(channel_id),))
            else:
                db.execute(
                    "DELETE FROM pending WHERE channel_id=? AND seq=?", (_hex_id(channel_id), seq)
                )

    # cross-process channel locks (one request at a time per channel, whatever the process)

    def try_lock(self, channel_id: bytes, owner: str, lease_s: float) -> LockHolder | None:
        """Take the channel's lock for ``owner``; None if taken, else the current holder.

        A lock is free when nobody holds it, when its lease ran out (the holder stopped
        renewing it: hung, or crashed on another host), or when its holder's process on
        this host is gone (crashed: no need to wait for the lease).
        """
        host, now = socket.gethostname(), time.time()
        with self._tx() as db:
            row = db.execute(
                "SELECT owner, pid, host, expires_at FROM channel_locks WHERE channel_id=?",
                (_hex_id(channel_id),),
            ).fetchone()
            if row is not None and row[0] != owner:
                holder = LockHolder(row[0], row[1], row[2], row[3])
                if holder.expires_at > now and not (holder.host == host and _dead(holder.pid)):
                    return holder
            db.execute(
                "INSERT OR REPLACE INTO channel_locks VALUES (?,?,?,?,?)",
                (_hex_id(channel_id), owner, os.getpid(), host, now + lease_s),
            )
        return None

    def renew_lock(self, channel_id: bytes, owner: str, lease_s: float) -> bool:
        """Extend ``owner``'s lease; False if it lost the lock meanwhile."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE channel_locks SET expires_at=? WHERE channel_id=? AND owner=?",
                (time.time() + lease_s, _hex_id(channel_id), owner),
            )
            return cur.rowcount == 1

    def unlock(self, channel_id: bytes, owner: str) -> None:
        with self._tx() as db:
            db.execute(
                "DELETE FROM channel_locks WHERE channel_id=? AND owner=?",
                (_hex_id(channel_id), owner),
            )

    # session keys

    def new_session_key(self) -> LocalAccount:
        """A fresh key, on disk (owner-only file) before anything is signed with it."""
        account: LocalAccount = Account.create()
        with self._tx() as db:
            db.execute(
                "INSERT INTO session_keys VALUES (?,?,NULL,?)",
                (account.address, "0x" + bytes(account.key).hex(), time.time()),
            )
        self._owner_only()
        return account

    def bind_session_key(self, address: str, channel_id: bytes) -> None:
        """Make ``address`` the channel's session key (the escrow has authorised it)."""
        with self._tx() as db:
            db.execute(
                "UPDATE session_keys SET channel_id=NULL WHERE channel_id=?", (_hex_id(channel_id),)
            )
            db.execute(
                "UPDATE session_keys SET channel_id=? WHERE address=?",
                (_hex_id(channel_id), address),
            )

    def session_account(self, channel_id: bytes) -> LocalAccount | None:
        """The channel's session key, if it has one."""
        rows = self._query(
            "SELECT key FROM session_keys WHERE channel_id=?", (_hex_id(channel_id),)
        )
        if not rows:
            return None
        account: LocalAccount = Account.from_key(rows[0]["key"])
        return account

    def _owner_only(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            path = Path(f"{self.path}{suffix}")
            if path.exists():
                os.chmod(path, 0o600)

    # disputes

    def add_dispute(
        self,
        channel_id: bytes,
        seq: int | None,
        mismatches: list[dict[str, Any]],
        evidence: dict[str, Any],
    ) -> int:
        """Keep the evidence of a refused bill; return the dispute's id."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO disputes (channel_id, seq, mismatches, evidence, created_at)"
                " VALUES (?,?,?,?,?)",
                (
                    _hex_id(channel_id),
                    seq,
                    json.dumps(mismatches),
                    json.dumps(evidence),
                    time.time(),
                ),
            )
            return int(cur.lastrowid or 0)

    def disputes(self, channel_id: bytes | None = None) -> list[Dispute]:
        rows = self._query("SELECT * FROM disputes ORDER BY id")
        disputes = [_dispute(r) for r in rows]
        return [d for d in disputes if channel_id is None or d.channel_id == channel_id]


def _dead(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, under another user
    return False


def _check_follows(row: Any, seq: int, receipt: SignedReceipt) -> None:
    prev_seq, prev_in, prev_out = row
    r = receipt.receipt
    if seq != prev_seq + 1:
        raise StoreError(f"refusing seq {seq}: the store is at seq {prev_seq}")
    if r.input_tokens < prev_in or r.output_tokens < prev_out:
        raise StoreError(
            f"refusing lower totals ({r.input_tokens}, {r.output_tokens}) than the stored "
            f"({prev_in}, {prev_out})"
        )


def _hex_id(channel_id: bytes) -> str:
    return "0x" + channel_id.hex()


def _unhex(hex_str: str) -> bytes:
    return bytes.fromhex(hex_str[2:])


def _channel(r: sqlite3.Row) -> OpenChannel:
    return OpenChannel(
        channel_id=_unhex(r["id"]),
        chain_id=r["chain_id"],
        escrow=r["escrow"],
        client=r["client"],
        provider=r["provider"],
        endpoint=r["endpoint"],
        model=r["model"],
        token=r["token"],
        prices=Prices(r["input_price"], r["output_price"]),
        deposit=int(r["deposit"]),
        tokenizer_hash=_unhex(r["tokenizer_hash"]),
        context_length=r["context_length"],
        status=ChannelStatus.from_label(r["status"]),
        model_hash=_unhex(r["model_hash"]) or bytes(32),
    )


def _tally(r: sqlite3.Row) -> ChannelTally:
    receipt = None
    if r["receipt_signature"] is not None:
        receipt = SignedReceipt(
            Receipt(
                _unhex(r["channel_id"]),
                r["input_tokens"],
                r["output_tokens"],
                _unhex(r["usage_root"]),
            ),
            _unhex(r["receipt_signature"]),
        )
    return ChannelTally(
        seq=r["seq"],
        input_tokens=r["input_tokens"],
        output_tokens=r["output_tokens"],
        usage_root=_unhex(r["usage_root"]),
        receipt=receipt,
        delivered=bool(r["delivered"]),
    )


def _bill_line(r: sqlite3.Row) -> BillLine:
    return BillLine(
        seq=r["seq"],
        prompt_tokens=r["prompt_tokens"],
        completion_tokens=r["completion_tokens"],
        cost=r["cost"],
        record=SignedUsageRecord(
            UsageRecord.from_json(json.loads(r["record"])), _unhex(r["signature"])
        ),
        created_at=r["created_at"],
    )


def _dispute(r: sqlite3.Row) -> Dispute:
    return Dispute(
        id=r["id"],
        channel_id=_unhex(r["channel_id"]),
        seq=r["seq"],
        mismatches=json.loads(r["mismatches"]),
        evidence=json.loads(r["evidence"]),
        created_at=r["created_at"],
    )
