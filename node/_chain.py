"""What the node reads from and sends to the chain, and a cache of channel state in front of it.

``ChainView`` is the interface (``EscrowChain`` in ``_escrow.py`` implements it on web3; unit
tests pass an in-memory fake). ``ChannelCache`` keeps channel state for ``ttl`` seconds so a
request costs no RPC round trip, and mirrors it into the ledger's ``channels`` table.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace
from typing import Protocol

from tallystick.protocol import ChainError, Domain, SignedReceipt

from ._ledger import LedgerStore
from ._types import ChannelInfo, ChannelStatus

__all__ = ["ChainView", "ChannelCache", "ClaimOutcome", "CloseRequest", "ListingInfo"]


@dataclass(frozen=True)
class ListingInfo:
    """This node's listing of a model in the registry."""

    input_price_per_m: int
    output_price_per_m: int
    token: str
    tokenizer_hash: bytes
    context_length: int
    active: bool


@dataclass(frozen=True)
class CloseRequest:
    """A ``CloseRequested`` event: the provider must claim before ``closes_at``."""

    channel_id: bytes
    closes_at: int
    block: int


@dataclass(frozen=True)
class ClaimOutcome:
    """What a mined ``claimMany`` did: amounts claimed and receipts skipped (decoded reason)."""

    tx_hash: str
    gas_used: int
    claimed: dict[bytes, int] = field(default_factory=dict)  # channel -> amount paid
    skipped: dict[bytes, str] = field(default_factory=dict)  # channel -> custom error text

    @property
    def amount(self) -> int:
        return sum(self.claimed.values())


class ChainView(Protocol):
    """The node's window on the escrow; every method raises ``ChainError`` subclasses."""

    domain: Domain
    provider: str  # this node's address

    async def channel(self, channel_id: bytes) -> ChannelInfo | None:
        """Fresh on-chain state, or None if the escrow never opened this id."""
        ...

    async def read_channels(self, channel_ids: list[bytes]) -> dict[bytes, ChannelInfo | None]:
        """``channel`` for many ids at once (batched reads; the settlement pass uses it)."""
        ...

    async def listing(self, model_id: bytes) -> ListingInfo | None:
        """This provider's listing of ``model_id``, or None if it never listed it."""
        ...

    async def claim_cost_estimate(self, receipts: list[SignedReceipt]) -> int:
        """Gas price x gas estimate of ``claimMany(receipts)``, in wei."""
        ...

    async def claim_many(self, receipts: list[SignedReceipt]) -> ClaimOutcome:
        """Send ``claimMany`` from the provider's account and wait for it to be mined."""
        ...

    async def close_requests(self, from_block: int) -> tuple[list[CloseRequest], int]:
        """``CloseRequested`` events of our channels from ``from_block``, and the next block."""
        ...

    async def timestamp(self) -> int:
        """The latest block's timestamp (closesAt is compared to chain time, not ours)."""
        ...


class ChannelCache:
    """Channel state for ``ttl`` seconds; one fetch at a time per channel."""

    def __init__(self, chain: ChainView, ledger: LedgerStore, ttl: float) -> None:
        self._chain = chain
        self._ledger = ledger
        self._ttl = ttl
        self._entries: dict[bytes, tuple[float, ChannelInfo | None]] = {}
        self._locks: dict[bytes, asyncio.Lock] = {}

    async def get(self, channel_id: bytes, *, refresh: bool = False) -> ChannelInfo | None:
        """The channel, from cache unless stale or ``refresh``."""
        asked_at = time.monotonic()
        entry = self._entries.get(channel_id)
        if not refresh and entry and asked_at - entry[0] < self._ttl:
            return entry[1]
        lock = self._locks.setdefault(channel_id, asyncio.Lock())
        async with lock:
            # Another caller may have fetched while we waited for the lock.
            entry = self._entries.get(channel_id)
            if entry and entry[0] >= asked_at:
                return entry[1]
            try:
                info = await self._chain.channel(channel_id)
            except ChainError:
                # RPC down: serve on the last state seen (a deposit only grows while the
                # channel is open; the credit rule bounds what a stale view can cost us).
                stale = entry[1] if entry else self._ledger.get_channel(channel_id)
                if stale is None:
                    raise
                return stale
            self.put(channel_id, info)
            return info

    def put(self, channel_id: bytes, info: ChannelInfo | None) -> None:
        """Record fresh state (from a read or an event)."""
        self._entries[channel_id] = (time.monotonic(), info)
        if info is not None and info.status != ChannelStatus.NONE:
            self._ledger.put_channel(info)

    def put_many(self, states: dict[bytes, ChannelInfo | None]) -> None:
        """Record a batch of fresh states, mirrored to the ledger in one transaction."""
        now = time.monotonic()
        for channel_id, info in states.items():
            self._entries[channel_id] = (now, info)
        known = [i for i in states.values() if i is not None and i.status != ChannelStatus.NONE]
        if known:
            self._ledger.put_channels(known)

    def mark_closing(self, channel_id: bytes, closes_at: int) -> None:
        """Apply a ``CloseRequested`` event without waiting for the next read."""
        entry = self._entries.get(channel_id)
        info = entry[1] if entry else self._ledger.get_channel(channel_id)
        if info is not None and info.status == ChannelStatus.OPEN:
            self.put(channel_id, replace(info, status=ChannelStatus.CLOSING, closes_at=closes_at))
