"""Value types the node's parts pass between them: a channel's on-chain state, stored records."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from tallystick.protocol import Prices, SignedReceipt, SignedUsageRecord, UsageBill

__all__ = ["ChannelInfo", "ChannelStatus", "StoredReceipt", "StoredRecord"]

ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"


class ChannelStatus(IntEnum):
    """``ITallyEscrow.Status``."""

    NONE = 0
    OPEN = 1
    CLOSING = 2
    CLOSED = 3


@dataclass(frozen=True)
class ChannelInfo:
    """A channel as the escrow sees it, plus its ``modelId`` from the ``ChannelOpened`` event."""

    channel_id: bytes
    client: str
    provider: str
    token: str
    status: ChannelStatus
    model_id: bytes
    prices: Prices
    deposit: int
    paid: int
    claimed_input: int  # totals of the last claimed receipt
    claimed_output: int
    closes_at: int
    session_key: str | None = None

    def may_sign(self, address: str) -> bool:
        """True when ``address`` is the channel's client or its authorised session key."""
        return address == self.client or (
            self.session_key is not None and address == self.session_key
        )


@dataclass(frozen=True)
class Provenance:
    """What produced a completion (§10): the record's seed, sampling params, weights, proof."""

    seed: int = 0
    temperature: int = 0  # millionths, as the record carries it
    top_p: int = 1_000_000
    model_hash: bytes = bytes(32)
    proof: list[int] = field(default_factory=list, repr=False)  # PROOF_SCALE logits


@dataclass(frozen=True)
class StoredRecord:
    """A usage record the node signed, with the completion ids it covers."""

    signed: SignedUsageRecord
    completion_ids: list[int] = field(repr=False)
    model: str
    created_at: float
    # {"ttft_ms", "itl_ms", "total_ms"} as sent with the completion
    timings: dict[str, float] = field(default_factory=dict)
    # the committed logit of each completion id (§10.3; [] from an engine without one)
    proof: list[int] = field(default_factory=list, repr=False)

    @property
    def seq(self) -> int:
        return self.signed.record.seq

    def bill(self) -> UsageBill:
        """The ``tallystick`` object of the completion that carried this record (§8)."""
        return UsageBill(self.signed, self.completion_ids, self.timings, self.proof)

    @property
    def usage_root(self) -> bytes:
        return self.signed.record.usage_root()


@dataclass(frozen=True)
class StoredReceipt:
    """A receipt the client countersigned, matching the record ``seq``."""

    signed: SignedReceipt
    seq: int
    received_at: float

    @property
    def channel_id(self) -> bytes:
        return self.signed.receipt.channel_id
