"""``GET /v1/tally/channels/{id}`` (docs/protocol.md §8): one channel as this node sees it.

Presentation only: the escrow's state, the served, countersigned and claimed totals with
their costs, and the credit left, read from the ledger and shaped as the wire JSON.
"""

from __future__ import annotations

from typing import Any

from tallystick.protocol import ZERO_ROOT, ChannelState, Receipt, cost_of

from ._ledger import LedgerStore

__all__ = ["channel_view"]


def channel_view(
    channel: ChannelState, ledger: LedgerStore, credit_requests: int
) -> dict[str, Any]:
    """Served, countersigned and claimed totals of ``channel`` and the credit it has left."""
    book = ledger.book(channel.channel_id)
    served_in, served_out = book.totals
    receipt = ledger.last_receipt(channel.channel_id)
    signed = receipt.signed.receipt if receipt else Receipt(channel.channel_id, 0, 0, ZERO_ROOT)
    served_root = book.last.usage_root if book.last else ZERO_ROOT
    served_cost = cost_of(served_in, served_out, channel.prices)
    signed_cost = cost_of(signed.input_tokens, signed.output_tokens, channel.prices)
    worst_cost = cost_of(
        served_in + book.reserved_input, served_out + book.reserved_output, channel.prices
    )
    return {
        "channelId": "0x" + channel.channel_id.hex(),
        "status": channel.status.name.lower(),
        "closeAgreed": book.closing,
        "client": channel.client,
        "provider": channel.provider,
        "sessionKey": channel.session_key,
        "token": channel.token,
        "deposit": channel.deposit,
        "paid": channel.paid,
        "prices": {
            "inputPerM": channel.prices.input_per_m,
            "outputPerM": channel.prices.output_per_m,
        },
        "lastSeq": book.seq,
        "served": {
            **_totals(served_in, served_out, served_cost),
            "usageRoot": "0x" + served_root.hex(),
        },
        "countersigned": {
            **_totals(signed.input_tokens, signed.output_tokens, signed_cost),
            "seq": book.countersigned_seq,
            "usageRoot": "0x" + signed.usage_root.hex(),
        },
        "claimed": _totals(
            channel.claimed_input,
            channel.claimed_output,
            cost_of(channel.claimed_input, channel.claimed_output, channel.prices),
        ),
        "usageRoot": "0x" + served_root.hex(),  # = served.usageRoot: the next receipt's root
        "unpaid": served_cost - signed_cost,
        "inFlight": book.in_flight,
        "creditLeft": max(channel.deposit - worst_cost, 0),
        "creditRequests": credit_requests,
    }


def _totals(input_tokens: int, output_tokens: int, cost: int) -> dict[str, int]:
    return {"inputTokens": input_tokens, "outputTokens": output_tokens, "cost": cost}
