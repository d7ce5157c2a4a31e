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

from tallystick.protocol import (
    ChainError,
    ChannelState,
    ChannelStatus,
    Domain,
    Listing,
    SignedReceipt,
)

from ._ledger import LedgerStore

__all__ = [
    "STALE_PATIENCE_S",
    "ChainView",
    "ChannelCache",
    "ClaimOutcome",
    "CloseRequest",
    "KeyRetirement",
]


@dataclass(frozen=True)
class CloseRequest:
    """A ``CloseRequested`` event: the provider must claim before ``closes_at``."""

    channel_id: bytes
    closes_at: int
    block: int


@dataclass(frozen=True)
class KeyRetirement:
    """A ``SessionKeyRetired`` event: receipts ``key`` signed pay only until ``valid_until``."""

    channel_id: bytes
    key: str
    valid_until: int
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
    confirmations: int  # blocks deep ``channel`` reads (0: the head)

    def rpc_failures(self) -> dict[tuple[str, str], int]:
        """Transport failures per (RPC URL label, kind) since start."""
        ...

    async def channel(self, channel_id: bytes) -> ChannelState | None:
        """On-chain state ``confirmations`` blocks deep, or None if not opened by then."""
        ...

    async def read_channels(self, channel_ids: list[bytes]) -> dict[bytes, ChannelState | None]:
        """The channels at the head, many at once (the settlement pass checks claims on it)."""
        ...

    async def listing(self, model_id: bytes) -> Listing | None:
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

    async def tx_confirmations(self, tx_hash: str) -> int | None:
        """Blocks from the one holding ``tx_hash`` to the head (1: in the head block), or None
        when the chain has no receipt for it (never mined, or dropped by a reorg)."""
        ...

    async def key_retirements(self, from_block: int) -> tuple[list[KeyRetirement], int]:
        """``SessionKeyRetired`` events of our channels from ``from_block``, and the next block."""
        ...

    async def timestamp(self) -> int:
        """The latest block's timestamp (closesAt is compared to chain time, not ours)."""
        ...

    async def token_decimals(self, token: str) -> int:
        """An ERC-20 payment token's ``decimals()`` (the default claim threshold needs it)."""
        ...


STALE_PATIENCE_S = 1.0  # how long a request waits for a refresh when it has a last state


class ChannelCache:
    """Channel state for ``ttl`` seconds; one fetch at a time per channel.

    A request that knows a channel's last state waits at most ``patience`` seconds for a
    refresh, then goes on with that state while the fetch finishes in the background (a
    black-holed RPC only fails after the node's ``rpc_timeout``; serving must not wait for it).
    """

    def __init__(
        self, chain: ChainView, ledger: LedgerStore, ttl: float, patience: float = STALE_PATIENCE_S
    ) -> None:
        self._chain = chain
        self._ledger = ledger
        self._ttl = ttl
        self._patience = patience
        self._entries: dict[bytes, tuple[float, ChannelState | None]] = {}
        self._fetches: dict[bytes, asyncio.Task[ChannelState | None]] = {}

    async def get(self, channel_id: bytes, *, refresh: bool = False) -> ChannelState | None:
        """The channel, from cache unless stale or ``refresh``."""
        entry = self._entries.get(channel_id)
        if not refresh and entry and time.monotonic() - entry[0] < self._ttl:
            return entry[1]
        # Callers join the fetch in flight rather than starting one each.
        fetch = self._fetches.get(channel_id)
        if fetch is None:
            fetch = asyncio.create_task(self._fetch(channel_id))
            fetch.add_done_callback(_retrieve)
            self._fetches[channel_id] = fetch
        # RPC down or slow: serve on the last state seen (a deposit only grows while the
        # channel is open; the credit rule bounds what a stale view can cost us).
        stale = entry[1] if entry else self._ledger.get_channel(channel_id)
        if stale is None:
            return await asyncio.shield(fetch)
        try:
            return await asyncio.wait_for(asyncio.shield(fetch), self._patience)
        except (ChainError, TimeoutError):
            return stale

    async def _fetch(self, channel_id: bytes) -> ChannelState | None:
        try:
            info = await self._chain.channel(channel_id)
            self.put(channel_id, info)
            return info
        finally:
            self._fetches.pop(channel_id, None)

    def put(self, channel_id: bytes, info: ChannelState | None) -> None:
        """Record fresh state (from a read or an event)."""
        self._entries[channel_id] = (time.monotonic(), info)
        if info is not None and info.status != ChannelStatus.NONE:
            self._ledger.put_channel(info)

    def put_many(self, states: dict[bytes, ChannelState | None]) -> None:
        """Record a batch of head states, mirrored to the ledger in one transaction.

        With confirmations, serving waits for its own deep read: a head state may hold a
        top-up that a reorg drops.
        """
        now = time.monotonic()
        if self._chain.confirmations == 0:
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


def _retrieve(task: asyncio.Task[ChannelState | None]) -> None:
    # A fetch whose waiters all went on with stale state: its error is expected (RPC down),
    # not an "exception was never retrieved".
    if not task.cancelled():
        task.exception()
