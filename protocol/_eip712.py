"""EIP-712 encoding, signing and recovery for the three signed messages of §4.

Encoding is separate from signing: ``*_message`` builds an eth-account ``SignableMessage``
from a struct hash we compute ourselves (pre-computed type hashes and a cached domain
separator, far faster than ``encode_typed_data``; the tests prove both agree and match the
contract's ``receiptDigest``), then ``account.sign_message`` signs it. Recovery works on the
digest directly with coincurve and enforces what OpenZeppelin's ``ECDSA.recover`` enforces
(65 bytes, v in {27, 28}, low s), so a signature we accept off-chain is one the escrow
accepts on-chain.
"""

from __future__ import annotations

from typing import Any

import coincurve
from eth_account.messages import SignableMessage
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address

from ._errors import InvalidSignature
from ._request_auth import REQUEST_AUTH_TYPE, RequestAuth, SignedRequestAuth
from ._types import (
    RECEIPT_TYPE,
    Domain,
    Receipt,
    SignedReceipt,
)
from ._usage import USAGE_RECORD_TYPE, SignedUsageRecord, UsageRecord

# secp256k1 group order; OpenZeppelin rejects s > n/2 (malleable signatures).
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_HALF_N = _SECP256K1_N // 2


def _message(domain: Domain, struct_hash: bytes) -> SignableMessage:
    # EIP-712 is EIP-191 version 0x01: header = domain separator, body = hashStruct(message).
    return SignableMessage(b"\x01", domain.separator, struct_hash)


def digest(message: SignableMessage) -> bytes:
    """The 32-byte hash that is actually signed: ``keccak(0x19 || 0x01 || separator || struct)``."""
    return keccak(b"\x19" + message.version + message.header + message.body)


def receipt_message(domain: Domain, receipt: Receipt) -> SignableMessage:
    """The Receipt (§4.1) as a ``SignableMessage`` under the escrow's domain."""
    return _message(domain, receipt.struct_hash())


def usage_record_message(domain: Domain, record: UsageRecord) -> SignableMessage:
    """The UsageRecord (§4.2) as a ``SignableMessage`` under the escrow's domain."""
    return _message(domain, record.struct_hash())


def request_auth_message(domain: Domain, auth: RequestAuth) -> SignableMessage:
    """The RequestAuth (§4.3) as a ``SignableMessage`` under the escrow's domain."""
    return _message(domain, auth.struct_hash())


def sign_receipt(account: LocalAccount, domain: Domain, receipt: Receipt) -> SignedReceipt:
    """The client's (or session key's) signature over a Receipt."""
    signed = account.sign_message(receipt_message(domain, receipt))
    return SignedReceipt(receipt, bytes(signed.signature))


def sign_usage_record(
    account: LocalAccount, domain: Domain, record: UsageRecord
) -> SignedUsageRecord:
    """The provider's signature over a UsageRecord."""
    signed = account.sign_message(usage_record_message(domain, record))
    return SignedUsageRecord(record, bytes(signed.signature))


def sign_request_auth(
    account: LocalAccount, domain: Domain, auth: RequestAuth
) -> SignedRequestAuth:
    """The client's (or session key's) signature over one request (§4.3)."""
    signed = account.sign_message(request_auth_message(domain, auth))
    return SignedRequestAuth(auth, bytes(signed.signature))


def recover_message_signer(message: SignableMessage, signature: bytes) -> str:
    """The checksummed address that signed ``message``; ``InvalidSignature`` if none does."""
    return _recover_digest(digest(message), signature)


def _recover_digest(message_hash: bytes, signature: bytes) -> str:
    rs_v = _normalise(signature)
    try:
        public = coincurve.PublicKey.from_signature_and_message(rs_v, message_hash, hasher=None)
    except Exception as exc:  # coincurve raises plain Exception for unrecoverable points
        raise InvalidSignature(f"signature does not recover: {exc}") from exc
    return to_checksum_address(keccak(public.format(compressed=False)[1:])[-20:])


def _normalise(signature: bytes) -> bytes:
    # Returns r || s || recid (coincurve's form) after OpenZeppelin ECDSA's checks.
    if not isinstance(signature, bytes | bytearray) or len(signature) != 65:
        raise InvalidSignature("a signature must be 65 bytes r || s || v")
    v = signature[64]
    if v not in (27, 28):
        raise InvalidSignature(f"signature v must be 27 or 28, got {v}")
    if int.from_bytes(signature[32:64], "big") > _HALF_N:
        raise InvalidSignature("signature s is in the upper half of the curve order (malleable)")
    return bytes(signature[:64]) + bytes([v - 27])


def recover_receipt_signer(domain: Domain, signed: SignedReceipt) -> str:
    """Who signed a Receipt under ``domain`` (another channel/chain/escrow: another address)."""
    return recover_message_signer(receipt_message(domain, signed.receipt), signed.signature)


def recover_usage_record_signer(domain: Domain, signed: SignedUsageRecord) -> str:
    """Who signed a UsageRecord under ``domain``."""
    return recover_message_signer(usage_record_message(domain, signed.record), signed.signature)


def recover_request_auth_signer(domain: Domain, signed: SignedRequestAuth) -> str:
    """Who signed a RequestAuth under ``domain``."""
    return recover_message_signer(request_auth_message(domain, signed.auth), signed.signature)


# --- The EIP-712 JSON document, for eth-account's generic encoder (the tests compare). ---

_TYPES: dict[str, list[dict[str, str]]] = {
    "EIP712Domain": [
        {"name": "name", "type": "string"},
        {"name": "version", "type": "string"},
        {"name": "chainId", "type": "uint256"},
        {"name": "verifyingContract", "type": "address"},
    ],
}


def _fields(type_string: str) -> list[dict[str, str]]:
    inner = type_string[type_string.index("(") + 1 : -1]
    return [dict(zip(("type", "name"), f.split(" "), strict=True)) for f in inner.split(",")]


def typed_data(domain: Domain, primary_type: str, message: dict[str, Any]) -> dict[str, Any]:
    """The full EIP-712 JSON document (``encode_typed_data(full_message=...)`` input)."""
    type_strings = {
        "Receipt": RECEIPT_TYPE,
        "UsageRecord": USAGE_RECORD_TYPE,
        "RequestAuth": REQUEST_AUTH_TYPE,
    }
    return {
        "types": {**_TYPES, primary_type: _fields(type_strings[primary_type])},
        "primaryType": primary_type,
        "domain": domain.typed_data_domain(),
        "message": message,
    }
