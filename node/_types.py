"""Value types the node's parts pass between them: stored records and receipts.

A channel's on-chain state is ``tallystick.protocol.ChannelState``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tallystick.protocol import SignedReceipt, SignedUsageRecord, UsageBill

__all__ = ["Provenance", "StoredReceipt", "StoredRecord"]


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
