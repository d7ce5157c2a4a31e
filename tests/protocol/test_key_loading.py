"""One loader for private keys and keystores (protocol/_keys.py), used by wallet and node alike."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from eth_account import Account
from tallystick.client import Wallet, WalletError
from tallystick.node import KeyLoadError, load_account, load_settings
from tallystick.protocol import InvalidKey, account_from_key, account_from_keystore

KEY = os.urandom(32).hex()
ADDRESS = Account.from_key(KEY).address
BASE = {"rpc": "http://x", "registry": "0x" + "11" * 20, "escrow": "0x" + "22" * 20}


def _unchained(exc: BaseException) -> bool:
    """No foreign exception (whose message or locals may hold the key) travels with ``exc``."""
    return exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)


def _keystore(tmp_path: Path, password: str = "pw") -> Path:
    path = tmp_path / "key.json"
    path.write_text(json.dumps(Account.encrypt(KEY, password)))
    return path


@pytest.mark.parametrize("text", [KEY, "0x" + KEY, f"  0X{KEY}\n"])
def test_hex_keys_with_or_without_prefix_load(text: str) -> None:
    assert account_from_key(text).address == ADDRESS


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (KEY[:-1], "64 hex digits"),
        (KEY[:-1] + "z", "not a valid secp256k1 private key"),
        ("00" * 32, "not a valid secp256k1 private key"),  # zero is no key
        (None, "64 hex digits"),
    ],
)
def test_bad_keys_are_refused_without_quoting_them(text: str, message: str) -> None:
    with pytest.raises(InvalidKey, match=message) as bad:
        account_from_key(text)
    assert KEY[:-1] not in str(bad.value)
    assert _unchained(bad.value)


def test_keystore_decrypts_and_asks_for_the_password_only_after_reading(tmp_path: Path) -> None:
    path = _keystore(tmp_path)
    assert account_from_keystore(path, "pw").address == ADDRESS
    assert account_from_keystore(str(path), lambda: "pw").address == ADDRESS
    asked: list[str] = []
    with pytest.raises(InvalidKey, match="cannot read keystore"):
        account_from_keystore(tmp_path / "missing.json", lambda: asked.append("x") or "pw")
    assert asked == []


def test_keystore_failures_each_say_what_is_wrong(tmp_path: Path) -> None:
    path = _keystore(tmp_path)
    with pytest.raises(InvalidKey, match="wrong password for keystore"):
        account_from_keystore(path, "nope")
    (tmp_path / "text.json").write_text("not json")
    with pytest.raises(InvalidKey, match="is not JSON"):
        account_from_keystore(tmp_path / "text.json", "pw")
    (tmp_path / "other.json").write_text(json.dumps({"crypto": 1}))
    with pytest.raises(InvalidKey, match="not a valid Ethereum keystore"):
        account_from_keystore(tmp_path / "other.json", "pw")


def test_wallet_and_node_load_the_same_key_and_translate_the_same_errors(tmp_path: Path) -> None:
    path = _keystore(tmp_path)
    assert Wallet.from_key(KEY).address == ADDRESS
    assert Wallet.from_keystore(path, "pw").address == ADDRESS
    settings = load_settings({**BASE, "keystore": path}, env={})
    env = {"TALLYSTICK_NODE_KEYSTORE_PASSWORD": "pw"}
    assert load_account(settings, env=env).address == ADDRESS
    assert load_account(load_settings({**BASE, "key": KEY}, env={})).address == ADDRESS
    with pytest.raises(WalletError, match="wrong password for keystore") as client_side:
        Wallet.from_keystore(path, "nope")
    with pytest.raises(KeyLoadError, match="wrong password for keystore") as node_side:
        load_account(settings, env={"TALLYSTICK_NODE_KEYSTORE_PASSWORD": "nope"})
    assert str(client_side.value) == str(node_side.value)
    for raised in (client_side.value, node_side.value):
        assert _unchained(raised)
