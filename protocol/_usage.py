"""The provider's per-request UsageRecord and the usage chain it forms (§4.2, §5)."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from eth_utils import keccak

from ._errors import ProtocolError
from ._types import (
    INT64_MAX,
    INT64_MIN,
    UINT32_MAX,
    UINT64_MAX,
    check_bytes32,
    check_signature,
    check_uint,
    hex32,
    parse_hex,
    parse_int,
    wire_field,
)

ZERO_ROOT = bytes(32)
EMPTY_HASH = keccak(b"")
USAGE_RECORD_TYPE = (
    "UsageRecord(bytes32 channelId,uint64 seq,uint32 promptTokens,uint32 completionTokens,"
    "bytes32 promptHash,bytes32 completionHash,uint64 inputTokens,uint64 outputTokens,"
    "bytes32 prevRoot,int64 seed,uint32 temperature,uint32 topP,bytes32 modelHash,"
    "bytes32 proofHash)"
)
USAGE_RECORD_TYPEHASH = keccak(text=USAGE_RECORD_TYPE)


def hash_token_ids(ids: Sequence[int]) -> bytes:
    """keccak256 of the ids as 4-byte big-endian unsigned integers, concatenated (§4.2)."""
    try:
        packed = struct.pack(f">{len(ids)}I", *ids)
    except struct.error as exc:
        raise ValueError(f"token ids must be integers in [0, {UINT32_MAX}]: {exc}") from exc
    return keccak(packed)


@dataclass(frozen=True)
class UsageRecord:
    """What the provider signs for one request: its counts, hashes and the new totals."""

    channel_id: bytes
    seq: int
    prompt_tokens: int
    completion_tokens: int
    prompt_hash: bytes
    completion_hash: bytes
    input_tokens: int
    output_tokens: int
    prev_root: bytes
    # What produced the ids (§10): the seed and sampling parameters the sampler was keyed by
    # (temperature and top_p in millionths), the listing's modelHash and the hash of the
    # per-token logit proof. The defaults describe a record that claims nothing about them.
    seed: int = 0
    temperature: int = 0
    top_p: int = 1_000_000
    model_hash: bytes = bytes(32)
    proof_hash: bytes = EMPTY_HASH

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if not INT64_MIN <= self.seed <= INT64_MAX:
            raise ValueError(f"seed must be a signed 64-bit integer, got {self.seed}")
        check_uint("temperature", self.temperature, UINT32_MAX)
        check_uint("top_p", self.top_p, UINT32_MAX)
        for name in (
            "channel_id",
            "prompt_hash",
            "completion_hash",
            "prev_root",
            "model_hash",
            "proof_hash",
        ):
            object.__setattr__(self, name, check_bytes32(name, getattr(self, name)))
        check_uint("seq", self.seq, UINT64_MAX)
        check_uint("prompt_tokens", self.prompt_tokens, UINT32_MAX)
        check_uint("completion_tokens", self.completion_tokens, UINT32_MAX)
        check_uint("input_tokens", self.input_tokens, UINT64_MAX)
        check_uint("output_tokens", self.output_tokens, UINT64_MAX)

    def struct_hash(self) -> bytes:
        """EIP-712 ``hashStruct(UsageRecord)``; every field is one 32-byte word."""
        return keccak(
            USAGE_RECORD_TYPEHASH
            + self.channel_id
            + self.seq.to_bytes(32, "big")
            + self.prompt_tokens.to_bytes(32, "big")
            + self.completion_tokens.to_bytes(32, "big")
            + self.prompt_hash
            + self.completion_hash
            + self.input_tokens.to_bytes(32, "big")
            + self.output_tokens.to_bytes(32, "big")
            + self.prev_root
            + self.seed.to_bytes(32, "big", signed=True)
            + self.temperature.to_bytes(32, "big")
            + self.top_p.to_bytes(32, "big")
            + self.model_hash
            + self.proof_hash
        )

    def usage_root(self) -> bytes:
        """The usage root after this record."""
        return next_usage_root(self.prev_root, self)

    def to_json(self) -> dict[str, Any]:
        """The ``record`` object of §8 (EIP-712 field names, hex bytes, integer numbers)."""
        return {
            "channelId": hex32(self.channel_id),
            "seq": self.seq,
            "promptTokens": self.prompt_tokens,
            "completionTokens": self.completion_tokens,
            "promptHash": hex32(self.prompt_hash),
            "completionHash": hex32(self.completion_hash),
            "inputTokens": self.input_tokens,
            "outputTokens": self.output_tokens,
            "prevRoot": hex32(self.prev_root),
            "seed": str(self.seed),
            "temperature": self.temperature,
            "topP": self.top_p,
            "modelHash": hex32(self.model_hash),
            "proofHash": hex32(self.proof_hash),
        }

    @classmethod
    def from_json(cls, obj: Any) -> UsageRecord:
        """Parse the ``record`` object of §8; ``ProtocolError`` on anything malformed."""

        def b32(key: str) -> bytes:
            return parse_hex(key, wire_field(obj, key), 32)

        def num(key: str, maximum: int) -> int:
            return parse_int(key, wire_field(obj, key), maximum)

        return cls(
            channel_id=b32("channelId"),
            seq=num("seq", UINT64_MAX),
            prompt_tokens=num("promptTokens", UINT32_MAX),
            completion_tokens=num("completionTokens", UINT32_MAX),
            prompt_hash=b32("promptHash"),
            completion_hash=b32("completionHash"),
            input_tokens=num("inputTokens", UINT64_MAX),
            output_tokens=num("outputTokens", UINT64_MAX),
            prev_root=b32("prevRoot"),
            seed=_seed(wire_field(obj, "seed")),
            temperature=num("temperature", UINT32_MAX),
            top_p=num("topP", UINT32_MAX),
            model_hash=b32("modelHash"),
            proof_hash=b32("proofHash"),
        )


@dataclass(frozen=True)
class SignedUsageRecord:
    """A UsageRecord with the provider's 65-byte signature."""

    record: UsageRecord
    signature: bytes = field(repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "signature", check_signature(self.signature))

    def to_json(self) -> dict[str, Any]:
        """``{"record": {...}, "signature": "0x..."}`` as in the ``tallystick`` object of §8."""
        return {"record": self.record.to_json(), "signature": hex32(self.signature)}

    @classmethod
    def from_json(cls, obj: Any) -> SignedUsageRecord:
        """Parse ``{"record", "signature"}``; ``ProtocolError`` on anything malformed."""
        record = UsageRecord.from_json(wire_field(obj, "record"))
        signature = parse_hex("signature", wire_field(obj, "signature"), 65)
        return cls(record, signature)


def _seed(value: Any) -> int:
    # A decimal string: JSON numbers above 2^53 lose precision in JavaScript clients.
    if not isinstance(value, str) or not value.lstrip("-").isdigit() or len(value) > 20:
        raise ProtocolError(f"seed must be a decimal string, got {value!r}")
    seed = int(value)
    if not INT64_MIN <= seed <= INT64_MAX:
        raise ProtocolError(f"seed must be a signed 64-bit integer, got {seed}")
    return seed


def next_usage_root(prev_root: bytes, record: UsageRecord) -> bytes:
    """``keccak256(abi.encode(prevRoot, hashStruct(record)))`` (§5)."""
    if record.prev_root != prev_root:
        # A record names the root it extends; chaining it onto another root is a caller bug
        # that would silently fork the chain.
        raise ProtocolError(
            f"record seq {record.seq} extends root {hex32(record.prev_root)}, "
            f"not {hex32(prev_root)}"
        )
    return keccak(check_bytes32("prev_root", prev_root) + record.struct_hash())
