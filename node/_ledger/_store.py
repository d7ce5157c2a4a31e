"""The ledger's interface: ``LedgerStore`` and the rows it returns.

``LedgerStore`` is what the gate, the cache, the settlement worker and the dashboards use;
``SqlLedger`` (``_base.py``) implements it once for both stores. Every write is durable when
the call (or its ``channel_lock``) returns.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from tallystick.protocol import ChannelState

from .._types import StoredReceipt, StoredRecord

__all__ = ["Book", "ClaimItem", "ClaimRow", "LedgerStore", "UsageRow"]


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
    status: str  # "pending", "confirmed" (mined), "final", "reorged" (dropped), "failed"
    created_at: float
    gas_used: int | None
    amount: int | None
    error: str | None
    items: tuple[ClaimItem, ...]


@dataclass(frozen=True)
class UsageRow:
    """One served request as the earnings views read it: counts, totals after it, timings."""

    channel_id: bytes
    seq: int
    model: str
    created_at: float
    prompt_tokens: int
    completion_tokens: int
    input_tokens: int  # the channel's cumulative totals after this request
    output_tokens: int
    timings: dict[str, float]


@dataclass(frozen=True)
class Book:
    """One channel's bookkeeping as the ledger holds it (read under ``channel_lock``)."""

    last: StoredRecord | None  # the last record signed, by any replica
    countersigned_seq: int
    in_flight: int  # live reservations: requests generating now, on any live replica
    reserved_input: int
    reserved_output: int
    closing: bool  # the provider countersigned the final receipt

    @property
    def seq(self) -> int:
        return self.last.seq if self.last else 0

    @property
    def totals(self) -> tuple[int, int]:
        rec = self.last.signed.record if self.last else None
        return (rec.input_tokens, rec.output_tokens) if rec else (0, 0)


class LedgerStore(Protocol):
    """What the node keeps; every write is durable when the call (or its lock) returns."""

    url: str

    def channel_lock(self, channel_id: bytes) -> AbstractContextManager[None]: ...
    def book(self, channel_id: bytes) -> Book: ...
    def add_reservation(
        self, channel_id: bytes, owner: str, prompt: int, max_tokens: int
    ) -> int: ...
    def drop_reservation(self, reservation_id: int) -> None: ...
    def set_closing(self, channel_id: bytes) -> None: ...
    def heartbeat(self, owner: str, now: float, ttl: float) -> None: ...
    def acquire_lease(self, name: str, owner: str, now: float, ttl: float) -> bool: ...
    def release_lease(self, name: str, owner: str) -> None: ...
    def add_record(self, stored: StoredRecord) -> None: ...
    def get_record(self, channel_id: bytes, seq: int) -> StoredRecord | None: ...
    def last_record(self, channel_id: bytes) -> StoredRecord | None: ...
    def find_record(self, channel_id: bytes, usage_root: bytes) -> StoredRecord | None: ...
    def usage_since(self, since: float) -> list[UsageRow]: ...
    def add_receipt(self, stored: StoredReceipt) -> None: ...
    def last_receipt(self, channel_id: bytes) -> StoredReceipt | None: ...
    def latest_receipts(self) -> list[StoredReceipt]: ...
    def put_channel(self, info: ChannelState) -> None: ...
    def put_channels(self, infos: list[ChannelState]) -> None: ...
    def get_channel(self, channel_id: bytes) -> ChannelState | None: ...
    def channels(self) -> list[ChannelState]: ...
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
    def set_claim_status(self, claim_id: int, status: str) -> None: ...
    def get_meta(self, key: str) -> str | None: ...
    def set_meta(self, key: str, value: str) -> None: ...
    def close(self) -> None: ...
