"""Value types shared by every part: the EIP-712 domain, prices and the Receipt (§3, §4).

Frozen dataclasses; byte fields are ``bytes`` of length 32, addresses checksummed ``str``.
Constructors validate ranges (``ValueError``); ``from_json`` translates malformed wire input
into ``ProtocolError`` so an HTTP handler can answer with a readable message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from eth_abi import encode as abi_encode
from eth_utils import is_address, keccak, to_checksum_address

from ._errors import ProtocolError
from ._untrusted import loads_untrusted

ETH = "0x0000000000000000000000000000000000000000"  # the zero address: ETH as payment token
UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
UINT96_MAX = 2**96 - 1
UINT256_MAX = 2**256 - 1

DOMAIN_NAME = "TallyEscrow"
DOMAIN_VERSION = "1"
DOMAIN_TYPE = "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
DOMAIN_TYPEHASH = keccak(text=DOMAIN_TYPE)
RECEIPT_TYPE = "Receipt(bytes32 channelId,uint64 inputTokens,uint64 outputTokens,bytes32 usageRoot)"
RECEIPT_TYPEHASH = keccak(text=RECEIPT_TYPE)
RECEIPT_HEADER = "X-Tally-Receipt"  # piggybacks the last countersigned receipt (§8)


def check_uint(name: str, value: int, maximum: int) -> int:
    """Return ``value`` if it is an int in ``[0, maximum]``, else raise ``ValueError``."""
    # bool is an int subclass; a True token count is always a bug upstream.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {type(value).__name__}")
    if value < 0 or value > maximum:
        raise ValueError(f"{name} must be in [0, {maximum}], got {value}")
    return value


def check_bytes32(name: str, value: bytes) -> bytes:
    """Return ``value`` as plain ``bytes`` if it is 32 bytes long, else raise ``ValueError``."""
    if not isinstance(value, bytes | bytearray) or len(value) != 32:
        raise ValueError(f"{name} must be 32 bytes, got {value!r}")
    return bytes(value)


def check_signature(value: bytes) -> bytes:
    """Return a 65-byte ``r || s || v`` signature as plain ``bytes``, else raise ``ValueError``."""
    if not isinstance(value, bytes | bytearray) or len(value) != 65:
        raise ValueError("signature must be 65 bytes")
    return bytes(value)


def checksum(name: str, value: str) -> str:
    """Return the checksummed form of an address, or raise ``ValueError``."""
    if not isinstance(value, str) or not is_address(value):
        raise ValueError(f"{name} must be an address, got {value!r}")
    return to_checksum_address(value)


def hex32(value: bytes) -> str:
    """``0x``-prefixed hex of a byte string (the wire form of §8)."""
    return "0x" + value.hex()


def parse_hex(name: str, value: Any, length: int | None = None) -> bytes:
    """Parse a ``0x``-hex wire field into bytes; ``ProtocolError`` on anything else."""
    if not isinstance(value, str) or not value.startswith(("0x", "0X")):
        raise ProtocolError(f"{name} must be a 0x-prefixed hex string, got {value!r}", field=name)
    try:
        raw = bytes.fromhex(value[2:])
    except ValueError as exc:
        raise ProtocolError(f"{name} is not valid hex: {value!r}", field=name) from exc
    if length is not None and len(raw) != length:
        raise ProtocolError(f"{name} must be {length} bytes, got {len(raw)}", field=name)
    return raw


def parse_int(name: str, value: Any, maximum: int) -> int:
    """Parse a JSON-number wire field; ``ProtocolError`` unless an integer in range.

    JSON has one number type: ``2.0`` is the integer 2 (as JSON Schema and §8.3 say), ``2.5``
    is not.
    """
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    try:
        return check_uint(name, value, maximum)
    except ValueError as exc:
        raise ProtocolError(str(exc), field=name) from exc


def wire_field(obj: Any, key: str) -> Any:
    """``obj[key]`` for a JSON object, with a ``ProtocolError`` naming the missing field."""
    if not isinstance(obj, dict):
        raise ProtocolError(f"expected a JSON object, got {type(obj).__name__}")
    if key not in obj:
        raise ProtocolError(f"missing field {key!r}", field=key)
    return obj[key]


@dataclass(frozen=True)
class Domain:
    """The EIP-712 domain of §4: name "TallyEscrow", version "1", the chain and the escrow."""

    chain_id: int
    escrow: str

    def __post_init__(self) -> None:
        check_uint("chain_id", self.chain_id, UINT256_MAX)
        object.__setattr__(self, "escrow", checksum("escrow", self.escrow))

    @cached_property
    def separator(self) -> bytes:
        """``hashStruct(EIP712Domain)``, computed once per domain."""
        return keccak(
            abi_encode(
                ["bytes32", "bytes32", "bytes32", "uint256", "address"],
                [
                    DOMAIN_TYPEHASH,
                    keccak(text=DOMAIN_NAME),
                    keccak(text=DOMAIN_VERSION),
                    self.chain_id,
                    self.escrow,
                ],
            )
        )

    def typed_data_domain(self) -> dict[str, Any]:
        """The domain as eth-account's ``encode_typed_data`` expects it."""
        return {
            "name": DOMAIN_NAME,
            "version": DOMAIN_VERSION,
            "chainId": self.chain_id,
            "verifyingContract": self.escrow,
        }


@dataclass(frozen=True)
class Prices:
    """A listing's (or a channel's snapshot of) prices per million tokens, in base units."""

    input_per_m: int
    output_per_m: int

    def __post_init__(self) -> None:
        check_uint("input_per_m", self.input_per_m, UINT96_MAX)
        check_uint("output_per_m", self.output_per_m, UINT96_MAX)


@dataclass(frozen=True)
class Receipt:
    """The client's cumulative receipt for a channel (§4.1); what the escrow pays against."""

    channel_id: bytes
    input_tokens: int
    output_tokens: int
    usage_root: bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_id", check_bytes32("channel_id", self.channel_id))
        check_uint("input_tokens", self.input_tokens, UINT64_MAX)
        check_uint("output_tokens", self.output_tokens, UINT64_MAX)
        object.__setattr__(self, "usage_root", check_bytes32("usage_root", self.usage_root))

    def struct_hash(self) -> bytes:
        """EIP-712 ``hashStruct(Receipt)``; every field is one 32-byte word."""
        return keccak(
            RECEIPT_TYPEHASH
            + self.channel_id
            + self.input_tokens.to_bytes(32, "big")
            + self.output_tokens.to_bytes(32, "big")
            + self.usage_root
        )

    def as_tuple(self) -> tuple[bytes, int, int, bytes]:
        """The ABI tuple of ``ITallyEscrow.Receipt``."""
        return (self.channel_id, self.input_tokens, self.output_tokens, self.usage_root)

    def to_json(self) -> dict[str, Any]:
        """The wire form of §8 without the signature."""
        return {
            "channelId": hex32(self.channel_id),
            "inputTokens": self.input_tokens,
            "outputTokens": self.output_tokens,
            "usageRoot": hex32(self.usage_root),
        }

    @classmethod
    def from_json(cls, obj: Any) -> Receipt:
        """Parse the wire form; ``ProtocolError`` on anything malformed."""
        return cls(
            channel_id=parse_hex("channelId", wire_field(obj, "channelId"), 32),
            input_tokens=parse_int("inputTokens", wire_field(obj, "inputTokens"), UINT64_MAX),
            output_tokens=parse_int("outputTokens", wire_field(obj, "outputTokens"), UINT64_MAX),
            usage_root=parse_hex("usageRoot", wire_field(obj, "usageRoot"), 32),
        )


@dataclass(frozen=True)
class SignedReceipt:
    """A Receipt with its 65-byte ``r || s || v`` signature."""

    receipt: Receipt
    signature: bytes = field(repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "signature", check_signature(self.signature))

    def to_json(self) -> dict[str, Any]:
        """``{"channelId","inputTokens","outputTokens","usageRoot","signature"}`` (§8)."""
        return {**self.receipt.to_json(), "signature": hex32(self.signature)}

    @classmethod
    def from_json(cls, obj: Any) -> SignedReceipt:
        """Parse the wire form of §8; ``ProtocolError`` on anything malformed."""
        receipt = Receipt.from_json(obj)  # fields in wire order: the first bad one is named
        return cls(receipt, parse_hex("signature", wire_field(obj, "signature"), 65))

    def to_header(self) -> str:
        """The ``X-Tally-Receipt`` value: the wire form as compact JSON (§8)."""
        return json.dumps(self.to_json(), separators=(",", ":"))

    @classmethod
    def from_header(cls, value: str) -> SignedReceipt:
        """Parse an ``X-Tally-Receipt`` value; ``ProtocolError`` (``InvalidJSON``) if malformed."""
        return cls.from_json(loads_untrusted(value, what=RECEIPT_HEADER))
