"""Every custom error of every ABI reads as a sentence (protocol/_explain.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eth_abi import encode
from eth_utils import keccak
from tallystick.protocol import (
    ContractError,
    TokenInfo,
    decode_revert,
    explain_contract_error,
)
from tallystick.protocol._revert import _EXTRA_ERRORS, _abi_type

ABI_DIR = Path(__file__).resolve().parents[2] / "protocol" / "abi"
USDC = TokenInfo("0x9fE46736679d2D9a65F0992F2272dE9f3c7fa6e0", "USDC", 6)
SAMPLE = {
    "address": "0x45f2d1e1D5C3d3F1a2b3C4d5E6f708192a3B4C5d",
    "bytes32": b"\xab" * 32,
    "string": "no",
    "bool": True,
}


def _errors() -> list[tuple[str, tuple[str, ...]]]:
    found: dict[str, tuple[str, ...]] = dict(_EXTRA_ERRORS)
    for path in sorted(ABI_DIR.glob("*.json")):
        artifact = json.loads(path.read_text())
        for item in artifact["abi"] if isinstance(artifact, dict) else artifact:
            if item["type"] == "error":
                found[item["name"]] = tuple(_abi_type(i) for i in item["inputs"])
    return sorted(found.items())


def _sample(kind: str, i: int) -> object:
    if kind in ("uint8", "int8"):
        return 3  # a channel status (closed), a bit count
    if kind.startswith(("uint", "int")):
        return 97_951_990 + i
    return SAMPLE[kind]


def test_the_abis_declare_errors():
    assert len(_errors()) >= 50


@pytest.mark.parametrize(("name", "types"), _errors(), ids=[n for n, _ in _errors()])
def test_every_abi_error_has_a_sentence(name, types):
    data = keccak(text=f"{name}({','.join(types)})")[:4]
    data += encode(list(types), [_sample(t, i) for i, t in enumerate(types)])
    exc = decode_revert(data)
    assert exc.name == name
    text = explain_contract_error(exc, token=USDC, tokens=lambda a: USDC)
    assert not text.startswith("the contract refused: " + name), text  # not the fallback
    assert text.endswith(f"[{name}]")
    assert f"{name}(" not in text  # the raw form never reaches a user
    assert "\n" not in text


def test_amounts_read_in_token_units():
    exc = ContractError(
        "ERC20InsufficientBalance",
        ("0x45f2d1e1D5C3d3F1a2b3C4d5E6f708192a3B4C5d", 97_951_990, 200_000_000),
    )
    text = explain_contract_error(exc, token=USDC)
    assert "holds 97.95199 USDC, 200 USDC is needed" in text
    # without the token: base units, said so, never a guessed decimal point
    assert "holds 97951990 base units" in explain_contract_error(exc)


def test_closing_twice_says_already_closed():
    text = explain_contract_error(ContractError("EscrowChannelClosed", (b"\x01" * 32,)))
    assert text == f"channel 0x{'01' * 32} is already closed [EscrowChannelClosed]"


def test_empty_and_unknown_reverts_are_sentences():
    assert "without a reason" in explain_contract_error(decode_revert(b""))
    unknown = decode_revert(b"\x12\x34\x56\x78")
    assert "none of the known contracts" in explain_contract_error(unknown)
