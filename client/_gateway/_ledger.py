"""The gateway's ledger: local API keys and the spend of every request, in the client's store.

The tables live in the same SQLite file as the SDK's channels and receipts (``gateway_*``,
WAL mode, a connection of their own), so one file holds the money and what it was spent on,
and a restarted gateway knows every key's spend to the unit. Keys are stored as SHA-256
hashes: the secret is shown once, when it is created.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._errors import StoreError
from .._sqlite import SqliteTables

__all__ = ["KEY_PREFIX", "USAGE_DIMENSIONS", "ApiKey", "Ledger", "Spend"]

KEY_PREFIX = "tsk-"
USAGE_DIMENSIONS = ("key", "model", "provider", "channel", "token", "day")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS gateway_keys (
    id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, secret_hash TEXT NOT NULL UNIQUE,
    max_total INTEGER, max_daily INTEGER, tpm INTEGER, rpm INTEGER,
    created_at REAL NOT NULL, revoked_at REAL
);
CREATE TABLE IF NOT EXISTS gateway_spend (
    id INTEGER PRIMARY KEY AUTOINCREMENT, key_id TEXT NOT NULL, model TEXT NOT NULL,
    provider TEXT NOT NULL, channel_id TEXT NOT NULL, seq INTEGER NOT NULL, token TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, cost INTEGER NOT NULL,
    day TEXT NOT NULL, created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS gateway_spend_key_day ON gateway_spend (key_id, day);
CREATE TABLE IF NOT EXISTS gateway_inflight (
    channel_id TEXT PRIMARY KEY, key_id TEXT NOT NULL, model TEXT NOT NULL,
    provider TEXT NOT NULL, token TEXT NOT NULL, created_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class ApiKey:
    """A local API key: its limits (None = no limit); spend limits in the token's base units."""

    id: str
    name: str
    max_total: int | None
    max_daily: int | None
    tpm: int | None
    rpm: int | None
    created_at: float
    revoked_at: float | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class Spend:
    """One verified request as the gateway billed it to a key."""

    key_id: str
    model: str
    provider: str
    channel_id: str
    seq: int
    token: str
    prompt_tokens: int
    completion_tokens: int
    cost: int


def today(now: float | None = None) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(time.time() if now is None else now))


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Ledger(SqliteTables):
    """Keys and spend; thread-safe, every write one transaction."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, _SCHEMA, what="the gateway's tables in", busy_timeout_ms=10_000)

    # keys

    def create_key(
        self,
        name: str,
        *,
        max_total: int | None = None,
        max_daily: int | None = None,
        tpm: int | None = None,
        rpm: int | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key and its secret (shown once: only its hash is stored)."""
        for label, value in (("max_total", max_total), ("max_daily", max_daily)):
            if value is not None and value < 0:
                raise StoreError(f"{label} must be at least 0")
        for label, value in (("tpm", tpm), ("rpm", rpm)):
            if value is not None and value < 1:
                raise StoreError(f"{label} must be at least 1")
        secret = KEY_PREFIX + secrets.token_urlsafe(24)
        key_id = secrets.token_hex(4)
        try:
            with self._tx() as db:
                db.execute(
                    "INSERT INTO gateway_keys VALUES (?,?,?,?,?,?,?,?,NULL)",
                    (
                        key_id,
                        name,
                        hash_secret(secret),
                        max_total,
                        max_daily,
                        tpm,
                        rpm,
                        time.time(),
                    ),
                )
        except sqlite3.IntegrityError as exc:
            raise StoreError(f"a key named {name!r} exists already") from exc
        return self.key(key_id), secret

    def key(self, key_id: str) -> ApiKey:
        rows = self._query("SELECT * FROM gateway_keys WHERE id = ? OR name = ?", (key_id, key_id))
        if not rows:
            raise StoreError(f"no gateway key {key_id!r}")
        return _key(rows[0])

    def keys(self) -> list[ApiKey]:
        return [_key(r) for r in self._query("SELECT * FROM gateway_keys ORDER BY created_at")]

    def authenticate(self, secret: str) -> ApiKey | None:
        """The active key with this secret, or None."""
        rows = self._query(
            "SELECT * FROM gateway_keys WHERE secret_hash = ? AND revoked_at IS NULL",
            (hash_secret(secret),),
        )
        return _key(rows[0]) if rows else None

    def revoke(self, key_id: str) -> ApiKey:
        key = self.key(key_id)
        with self._tx() as db:
            db.execute("UPDATE gateway_keys SET revoked_at = ? WHERE id = ?", (time.time(), key.id))
        return self.key(key.id)

    def set_limits(self, key_id: str, **limits: int | None) -> ApiKey:
        """Change a key's limits (``max_total``, ``max_daily``, ``tpm``, ``rpm``; None lifts)."""
        key = self.key(key_id)
        allowed = {"max_total", "max_daily", "tpm", "rpm"}
        with self._tx() as db:
            for name, value in limits.items():
                if name not in allowed:
                    raise StoreError(f"unknown limit {name!r}")
                db.execute(f"UPDATE gateway_keys SET {name} = ? WHERE id = ?", (value, key.id))
        return self.key(key.id)

    # spend

    def begin(self, channel_id: str, key_id: str, model: str, provider: str, token: str) -> None:
        """A request is about to be sent on the channel for ``key_id``.

        If it ends without a bill (a dropped stream), the SDK resolves it from the node's record
        before the channel's next request, and that bill is charged to this key.
        """
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO gateway_inflight VALUES (?,?,?,?,?,?)",
                (channel_id, key_id, model, provider, token, time.time()),
            )

    def inflight(self, channel_id: str) -> tuple[str, str, str, str] | None:
        """``(key_id, model, provider, token)`` of the channel's unresolved request, if any."""
        rows = self._query("SELECT * FROM gateway_inflight WHERE channel_id = ?", (channel_id,))
        if not rows:
            return None
        r = rows[0]
        return r["key_id"], r["model"], r["provider"], r["token"]

    def end(self, channel_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM gateway_inflight WHERE channel_id = ?", (channel_id,))

    def record(self, spend: Spend, now: float | None = None) -> None:
        """Charge a verified bill to its key; the channel has no request in flight after it."""
        now = time.time() if now is None else now
        with self._tx() as db:
            db.execute("DELETE FROM gateway_inflight WHERE channel_id = ?", (spend.channel_id,))
            db.execute(
                "INSERT INTO gateway_spend (key_id, model, provider, channel_id, seq, token, "
                "prompt_tokens, completion_tokens, cost, day, created_at) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    spend.key_id,
                    spend.model,
                    spend.provider,
                    spend.channel_id,
                    spend.seq,
                    spend.token,
                    spend.prompt_tokens,
                    spend.completion_tokens,
                    spend.cost,
                    today(now),
                    now,
                ),
            )

    def spent(self, key_id: str, day: str | None = None) -> int:
        """A key's total spend, or its spend on ``day`` (UTC, ``YYYY-MM-DD``)."""
        sql = "SELECT COALESCE(SUM(cost), 0) FROM gateway_spend WHERE key_id = ?"
        args: tuple[Any, ...] = (key_id,)
        if day is not None:
            sql += " AND day = ?"
            args += (day,)
        return int(self._query(sql, args)[0][0])

    def usage(self, by: tuple[str, ...]) -> list[dict[str, Any]]:
        """Requests, tokens and cost grouped by ``by`` (a subset of ``USAGE_DIMENSIONS``)."""
        unknown = [d for d in by if d not in USAGE_DIMENSIONS]
        if unknown:
            raise StoreError(
                f"cannot group by {', '.join(unknown)}; choose from {', '.join(USAGE_DIMENSIONS)}"
            )
        columns = {
            "key": "COALESCE(k.name, s.key_id)",
            "model": "s.model",
            "provider": "s.provider",
            "channel": "s.channel_id",
            "token": "s.token",
            "day": "s.day",
        }
        select = [f"{columns[d]} AS {d}" for d in by]
        group = f" GROUP BY {', '.join(columns[d] for d in by)}" if by else ""
        order = f" ORDER BY {', '.join(columns[d] for d in by)}" if by else ""
        sql = (
            f"SELECT {', '.join([*select, 'COUNT(*) AS requests'])}, "
            "SUM(s.prompt_tokens) AS prompt_tokens, SUM(s.completion_tokens) AS "
            "completion_tokens, SUM(s.cost) AS cost FROM gateway_spend s "
            f"LEFT JOIN gateway_keys k ON k.id = s.key_id{group}{order}"
        )
        return [
            {k: (int(r[k]) if r[k] is not None and k not in by else r[k]) for k in r.keys()}  # noqa: SIM118
            for r in self._query(sql)
            if r["requests"]
        ]


def _key(r: sqlite3.Row) -> ApiKey:
    return ApiKey(
        r["id"],
        r["name"],
        r["max_total"],
        r["max_daily"],
        r["tpm"],
        r["rpm"],
        r["created_at"],
        r["revoked_at"],
    )
