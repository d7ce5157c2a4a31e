"""The node's wire messages around a usage record (§8): written by the node, read by the client.

``UsageBill`` is the ``tallystick`` object of a completion (and of ``GET …/records/{seq}``);
``ClosingReceipt`` is the node's answer to ``POST …/close``. The receipt the client sends
(body and ``X-Tally-Receipt`` header) is ``SignedReceipt``. Each is written by ``to_json``
and read by ``from_json`` here only; ``from_json`` raises ``ProtocolError`` naming the first
malformed field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._errors import ProtocolError
from ._types import UINT64_MAX, SignedReceipt, hex32, parse_hex, parse_int, wire_field
from ._usage import SignedUsageRecord, UsageRecord

__all__ = ["ClosingReceipt", "UsageBill"]


@dataclass(frozen=True)
class UsageBill:
    """The provider's bill for one request: the signed record and the completion ids it covers.

    ``timings`` (``{"ttft_ms", "itl_ms", "total_ms"}``) and ``proof`` (the committed logit of
    each completion id, §10.3) are informational: the record's ``proofHash`` binds the proof,
    and an absent or malformed one reads as none (the audit skips the bill; billing does not
    depend on it).
    """

    signed: SignedUsageRecord
    completion_ids: list[int] = field(repr=False)
    timings: dict[str, float] = field(default_factory=dict)
    proof: list[int] = field(default_factory=list, repr=False)

    @property
    def record(self) -> UsageRecord:
        return self.signed.record

    def to_json(self) -> dict[str, Any]:
        """The ``tallystick`` object of §8."""
        return {
            **self.signed.to_json(),
            "completion_token_ids": self.completion_ids,
            "prompt_token_ids_hash": hex32(self.record.prompt_hash),
            "timings": self.timings,
            "proof": self.proof,
        }

    @classmethod
    def from_json(cls, obj: Any) -> UsageBill:
        """Parse a ``tallystick`` object; ``ProtocolError`` on a malformed record or ids."""
        if not isinstance(obj, dict):
            raise ProtocolError("the response carries no tallystick usage record")
        signed = SignedUsageRecord.from_json(obj)
        ids = obj.get("completion_token_ids")
        if not isinstance(ids, list) or not all(_is_count(i) for i in ids):
            raise ProtocolError(
                "completion_token_ids must be a list of token ids", field="completion_token_ids"
            )
        return cls(signed, ids, _timings(obj.get("timings")), _proof(obj.get("proof")))


@dataclass(frozen=True)
class ClosingReceipt:
    """The node's answer to a close: the final receipt, countersigned by the provider (§8.2)."""

    signed: SignedReceipt  # the client's final receipt, as stored
    provider_signature: bytes = field(repr=False)  # the provider's, over the same Receipt
    seq: int  # the last record it covers (0: the zero receipt of a channel that served nothing)

    def to_json(self) -> dict[str, Any]:
        """``{"receipt", "providerSignature", "seq"}``."""
        return {
            "receipt": self.signed.to_json(),
            "providerSignature": hex32(self.provider_signature),
            "seq": self.seq,
        }

    @classmethod
    def from_json(cls, obj: Any) -> ClosingReceipt:
        """Parse the close answer; ``ProtocolError`` naming the first malformed field."""
        return cls(
            SignedReceipt.from_json(wire_field(obj, "receipt")),
            parse_hex("providerSignature", wire_field(obj, "providerSignature"), 65),
            parse_int("seq", wire_field(obj, "seq"), UINT64_MAX),
        )


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _timings(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(v, int | float)}


def _proof(value: Any) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) for v in value):
        return []
    return value
