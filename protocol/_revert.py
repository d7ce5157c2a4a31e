"""Revert data → ``ContractError(name, args)``, from the custom errors of every artefact.

A revert can surface from any contract a call touches (the escrow, the registry it quotes,
an ERC-20 it pulls from, OpenZeppelin libraries), so one table covers all of them, plus
OpenZeppelin's ECDSA errors and Solidity's built-in ``Error(string)`` and ``Panic(uint256)``.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from eth_abi import decode as abi_decode
from eth_utils import keccak

from ._abi import load_artifact
from ._errors import ContractError

# The shipped artefacts; the test-only mocks (tests/abi/) revert with the same ERC-20 errors.
ARTIFACTS = ("TallyEscrow", "ProviderRegistry", "MockUSDC")

# Errors a contract may revert with although no artefact's ABI lists them (library internals).
_EXTRA_ERRORS = (
    ("Error", ("string",)),
    ("Panic", ("uint256",)),
    ("ECDSAInvalidSignature", ()),
    ("ECDSAInvalidSignatureLength", ("uint256",)),
    ("ECDSAInvalidSignatureS", ("bytes32",)),
    ("ReentrancyGuardReentrantCall", ()),
    ("SafeERC20FailedOperation", ("address",)),
    ("AddressEmptyCode", ("address",)),
    ("FailedCall", ()),
    ("InsufficientBalance", ("uint256", "uint256")),
)


def _abi_type(entry: dict[str, Any]) -> str:
    # Tuples in error arguments are spelled out as (t1,t2) for the selector and the decoder.
    if entry["type"].startswith("tuple"):
        inner = ",".join(_abi_type(c) for c in entry["components"])
        return f"({inner}){entry['type'][5:]}"
    return str(entry["type"])


@cache
def error_table() -> dict[bytes, tuple[str, tuple[str, ...]]]:
    """4-byte selector → (error name, argument types)."""
    table: dict[bytes, tuple[str, tuple[str, ...]]] = {}
    entries: list[tuple[str, tuple[str, ...]]] = list(_EXTRA_ERRORS)
    for artifact in ARTIFACTS:
        try:
            abi = load_artifact(artifact)["abi"]
        except FileNotFoundError:
            continue
        for item in abi:
            if item["type"] == "error":
                entries.append((item["name"], tuple(_abi_type(i) for i in item["inputs"])))
    for name, types in entries:
        table[keccak(text=f"{name}({','.join(types)})")[:4]] = (name, types)
    return table


def decode_revert(data: bytes) -> ContractError:
    """The custom error encoded in revert ``data`` (``UnknownError`` if no ABI declares it)."""
    data = bytes(data)
    if len(data) < 4:
        return ContractError("EmptyRevert" if not data else "UnknownError", (data,), data)
    known = error_table().get(data[:4])
    if known is None:
        return ContractError("UnknownError", (data,), data)
    name, types = known
    try:
        args = abi_decode(list(types), data[4:])
    except Exception:  # malformed payload behind a known selector
        return ContractError(name, (data[4:],), data)
    return ContractError(name, tuple(_plain(a) for a in args), data)


def _plain(value: Any) -> Any:
    # eth-abi returns lowercase addresses; checksum them so tests compare with account.address.
    if isinstance(value, str) and value.startswith("0x") and len(value) == 42:
        from eth_utils import to_checksum_address

        return to_checksum_address(value)
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value
