"""Disputed channels: the way out of one (a unilateral close and its deadline), in words.

A dispute leaves the node holding a record the client refused to countersign, so the node
answers every request with ``402 receipt_required`` and refuses a cooperative close (``409
receipt_not_final``). The SDK therefore stops using the channel (``ChannelDisputed``) and every
message about it names the exit: ``requestClose``, then ``finalize`` after the challenge period.
Meanwhile the provider's node can still claim the last receipt the client countersigned, and
nothing more; ``finalize`` refunds the rest of the deposit.
"""

from __future__ import annotations

import datetime
import json
from typing import TYPE_CHECKING, Any

from tallystick.protocol import ChannelStatus, TallystickError

from ._types import Dispute, OpenChannel

if TYPE_CHECKING:
    from ._chain import Chain

__all__ = ["challenge_period", "evidence_summary", "summary", "to_json", "utc", "way_out"]


def utc(ts: int) -> str:
    """Unix seconds as an unambiguous UTC time."""
    moment = datetime.datetime.fromtimestamp(ts, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def challenge_period(chain: Chain | None) -> int | None:
    """The escrow's challenge period in seconds, or None when the chain cannot say."""
    if chain is None:
        return None
    try:
        return chain.challenge_period()
    except TallystickError:
        return None


def way_out(info: OpenChannel, period: int | None, closes_at: int | None = None) -> str:
    """How to leave a disputed channel, with the deadline when it is known."""
    finalize = f"`tallystick channel finalize {info.hex_id}`"
    if info.status == ChannelStatus.CLOSING:
        when = f"after {utc(closes_at)}" if closes_at else "once the challenge period is over"
        return (
            f"A unilateral close is under way: run {finalize} {when} to get back what the "
            "provider may not claim."
        )
    if period is None:
        deadline = "once the escrow's challenge period is over"
    else:
        earliest = int(datetime.datetime.now(tz=datetime.UTC).timestamp()) + period
        deadline = (
            f"once the challenge period ({period} s) is over, i.e. after {utc(earliest)} "
            "if you request the close now"
        )
    return (
        "Leave it by a unilateral close: "
        f"`tallystick channel close --unilateral {info.hex_id}` (requestClose), then "
        f"{finalize} {deadline}; the provider can claim only what you countersigned "
        "meanwhile, and the rest of the deposit comes back to you."
    )


def summary(mismatches: list[dict[str, Any]], width: int = 160) -> str:
    """What did not check out, one ``field: expected …, got …`` per mismatch, each cut short."""
    parts = []
    for m in mismatches:
        got = json.dumps(m.get("got"))
        if len(got) > 60:
            got = got[:57] + "..."
        parts.append(f"{m.get('field')}: expected {m.get('expected')}, got {got}")
    text = "; ".join(parts)
    return text if len(text) <= width else text[: width - 3] + "..."


def evidence_summary(evidence: dict[str, Any]) -> str:
    """The evidence in a line: what was asked, what arrived, what the node billed."""
    request = evidence.get("request") or {}
    response = evidence.get("response") or {}
    asked = request.get("max_tokens", request.get("max_completion_tokens"))
    text = response.get("text") if isinstance(response, dict) else None
    if text is None and isinstance(response, dict):
        choices = response.get("choices") or [{}]
        first = choices[0] if isinstance(choices, list) and choices else {}
        text = (first.get("message") or {}).get("content") or first.get("text")
    if text is None:
        text = request.get("text", "")
    tally = evidence.get("tallystick") or {}
    record = tally.get("record") if isinstance(tally, dict) else None
    billed = (
        "no record"
        if not isinstance(record, dict)
        else (f"billed {record.get('promptTokens')} + {record.get('completionTokens')} tokens")
    )
    how = "interrupted, " if evidence.get("interrupted") else ""
    if evidence.get("ended_by_node"):
        how = "ended by the node, "
    return f"{how}max_tokens {asked}, received {len(text or '')} chars, {billed}"


def to_json(dispute: Dispute, info: OpenChannel | None, way: str | None) -> dict[str, Any]:
    """A dispute as ``tallystick disputes --json`` prints it."""
    return {
        "id": dispute.id,
        "channelId": "0x" + dispute.channel_id.hex(),
        "channelStatus": info.status.label if info else None,
        "provider": info.provider if info else None,
        "seq": dispute.seq,
        "createdAt": utc(int(dispute.created_at)),
        "mismatches": dispute.mismatches,
        "evidence": dispute.evidence,
        "wayOut": way,
    }
