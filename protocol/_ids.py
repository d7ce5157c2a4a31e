"""Identifiers of §2: model ids and channel ids."""

from __future__ import annotations

from eth_abi import encode as abi_encode
from eth_utils import keccak

from ._types import UINT256_MAX, check_bytes32, check_uint, checksum


def model_id(name: str) -> bytes:
    """``keccak256(utf8(modelName))``; the name is the exact ``id`` served in ``/v1/models``."""
    if not isinstance(name, str) or not name:
        raise ValueError("a model name must be a non-empty string")
    return keccak(name.encode("utf-8"))


def channel_id(escrow: str, client: str, provider: str, model_id: bytes, nonce: int) -> bytes:
    """``keccak256(abi.encode(escrow, client, provider, modelId, nonce))``."""
    return keccak(
        abi_encode(
            ["address", "address", "address", "bytes32", "uint256"],
            [
                checksum("escrow", escrow),
                checksum("client", client),
                checksum("provider", provider),
                check_bytes32("model_id", model_id),
                check_uint("nonce", nonce, UINT256_MAX),
            ],
        )
    )
