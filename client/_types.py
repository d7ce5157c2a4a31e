"""The client's own records of its channels, as the store keeps them.

``OpenChannel`` is what the client knows of a channel it opened (the escrow's view of a channel
is ``tallystick.protocol.ChannelState``); ``ChannelTally`` its state at the last verified
request; ``BillLine`` one verified request; ``Pending`` a request sent but not yet resolved;
``LockHolder`` who holds a channel's cross-process lock; ``Dispute`` a bill the client refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tallystick.protocol import ChannelStatus, Domain, Prices, SignedReceipt, SignedUsageRecord

__all__ = ["BillLine", "ChannelTally", "Dispute", "LockHolder", "OpenChannel", "Pending"]


@dataclass(frozen=True)
class OpenChannel:
    """A channel this client opened: what it knows about it (snapshot taken at open)."""

    channel_id: bytes
    chain_id: int
    escrow: str
    client: str
    provider: str
    endpoint: str
    model: str
    token: str  # the zero address for ETH
    prices: Prices
    deposit: int
    tokenizer_hash: bytes
    context_length: int
    status: ChannelStatus  # as last seen on chain
    model_hash: bytes = bytes(32)  # the listed weights at open (§10.1); zero: no claim

    @property
    def domain(self) -> Domain:
        return Domain(self.chain_id, self.escrow)

    @property
    def hex_id(self) -> str:
        return "0x" + self.channel_id.hex()


@dataclass(frozen=True)
class ChannelTally:
    """A channel's state at its last verified request."""

    seq: int
    input_tokens: int
    output_tokens: int
    usage_root: bytes
    receipt: SignedReceipt | None  # None before the first request
    delivered: bool  # the node acknowledged the receipt


@dataclass(frozen=True)
class BillLine:
    """One verified request: its counts, its cost and the provider's signed record."""

    seq: int
    prompt_tokens: int
    completion_tokens: int
    cost: int
    record: SignedUsageRecord
    created_at: float


@dataclass(frozen=True)
class Pending:
    """A request sent but not yet resolved: what the client asked for and what it received."""

    channel_id: bytes
    seq: int
    served: dict[str, Any]  # ``Served`` as JSON (prompt ids, received text, stop, max_tokens)
    received: bool  # some of the answer reached the client
    created_at: float


@dataclass(frozen=True)
class LockHolder:
    """Who holds a channel's lock in the store, and until when its lease runs."""

    owner: str
    pid: int
    host: str
    expires_at: float


@dataclass(frozen=True)
class Dispute:
    """A bill the client refused, with everything needed to show why."""

    id: int
    channel_id: bytes
    seq: int | None
    mismatches: list[dict[str, Any]]
    evidence: dict[str, Any]
    created_at: float
