"""Which receipts a settlement pass claims, and in how many ``claimMany`` transactions (§9).

Pure planning over the ledger's latest receipts and the escrow's state: a ``Candidate`` is a
receipt newer than what the escrow has claimed, with what claiming it would pay and when the
escrow stops paying it; ``plan_batches`` splits candidates into transactions that fit in a
block, the most urgent first. The ``SettlementWorker`` (``_settlement.py``) runs the passes.
"""

from __future__ import annotations

from dataclasses import dataclass

from tallystick.protocol import ChannelState, ChannelStatus, cost_of

from ._types import StoredReceipt

__all__ = ["Candidate", "claimable", "plan_batches", "receipt_gas", "receipt_value"]

# Gas model for splitting claims into blocks, with margin: on anvil a channel's first claim
# costs ~39,900 gas in a claimMany of 220 (8.78M gas), a later one ~23,400 at batch 50.
GAS_BASE = 60_000
GAS_FIRST_CLAIM = 45_000
GAS_LATER_CLAIM = 30_000


@dataclass(frozen=True)
class Candidate:
    """A receipt newer than what the escrow has claimed, and what claiming it would pay."""

    receipt: StoredReceipt
    channel: ChannelState
    value: int
    key_deadline: int | None = None  # the receipt's signer was retired: it pays until then

    @property
    def deadline(self) -> int | None:
        """When the escrow stops paying this receipt: ``closesAt`` or the signer's grace end."""
        times = [t for t in (self._closes_at, self.key_deadline) if t is not None]
        return min(times) if times else None

    @property
    def _closes_at(self) -> int | None:
        return self.channel.closes_at if self.channel.status == ChannelStatus.CLOSING else None

    @property
    def urgent(self) -> bool:
        return self.deadline is not None


def receipt_gas(candidate: Candidate) -> int:
    """A conservative gas estimate for one receipt in a ``claimMany`` (docs/protocol.md §7.2)."""
    first = (candidate.channel.claimed_input, candidate.channel.claimed_output) == (0, 0)
    return GAS_FIRST_CLAIM if first else GAS_LATER_CLAIM


def plan_batches(found: list[Candidate], max_gas: int) -> list[list[Candidate]]:
    """Split candidates into batches of at most ``max_gas`` (estimated), most urgent first."""
    batches: list[list[Candidate]] = []
    gas = max_gas  # forces a new batch for the first candidate
    for c in sorted(found, key=_priority):
        need = receipt_gas(c)
        if gas + need > max_gas:
            batches.append([])
            gas = GAS_BASE
        batches[-1].append(c)
        gas += need
    return batches


def _priority(c: Candidate) -> tuple[int, int, int]:
    # Receipts with a deadline first (a closing channel, a retired signer), soonest first (a
    # missed deadline loses the receipt); then the most valuable, so a pass cut short still
    # claimed the most.
    deadline = c.deadline
    if deadline is not None:
        return (0, deadline, -c.value)
    return (1, 0, -c.value)


def claimable(stored: StoredReceipt, info: ChannelState, now: int) -> bool:
    r = stored.signed.receipt
    if info.status == ChannelStatus.CLOSING and now >= info.closes_at:
        return False  # the challenge period is over: the escrow refuses claims
    if info.status not in (ChannelStatus.OPEN, ChannelStatus.CLOSING):
        return False
    newer = r.input_tokens >= info.claimed_input and r.output_tokens >= info.claimed_output
    return newer and (r.input_tokens, r.output_tokens) != (info.claimed_input, info.claimed_output)


def receipt_value(stored: StoredReceipt, info: ChannelState) -> int:
    r = stored.signed.receipt
    return max(
        min(cost_of(r.input_tokens, r.output_tokens, info.prices), info.deposit) - info.paid, 0
    )
