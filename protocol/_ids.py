"""Identifiers of §2: model ids, channel ids and channel salts."""

from __future__ import annotations

import secrets

from eth_abi import encode as abi_encode
from eth_utils import keccak

from ._types import check_bytes32, checksum

# Random bytes in a salt: unique enough per (client, provider, model), and cheap calldata.
SALT_BYTES = 8


def model_id(name: str) -> bytes:
    """``keccak256(utf8(modelName))``; the name is the exact ``id`` served in ``/v1/models``."""
    if not isinstance(name, str) or not name:
        raise ValueError("a model name must be a non-empty string")
    return keccak(name.encode("utf-8"))


def channel_id(escrow: str, client: str, provider: str, model_id: bytes, salt: bytes) -> bytes:
    """``keccak256(abi.encode(escrow, client, provider, modelId, salt))``: known before ``open``."""
    return keccak(
        abi_encode(
            ["address", "address", "address", "bytes32", "bytes32"],
            [
                checksum("escrow", escrow),
                checksum("client", client),
                checksum("provider", provider),
                check_bytes32("model_id", model_id),
                check_bytes32("salt", salt),
            ],
        )
    )


def new_salt() -> bytes:
    """A fresh channel salt: ``SALT_BYTES`` random bytes, right-aligned in 32 (zeros are cheap)."""
    return bytes(32 - SALT_BYTES) + secrets.token_bytes(SALT_BYTES)
