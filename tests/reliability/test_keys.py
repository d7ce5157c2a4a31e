"""Keys from encrypted keystores never reach logs, errors or metrics over a whole session.

The node runs as ``tallystick-node serve --keystore`` (password in the environment), the client
loads ``Wallet.from_keystore``; the session opens a channel, chats (plain and streaming), hits
errors (402, 401, a bad receipt), and closes. Everything observable is then searched for either
private key and the keystore password: the node's whole stdout/stderr, the client process's
log records and stderr, ``/metrics``, and the text of every exception the session raised.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from tallystick.client import ClientError, Wallet
from tallystick.protocol import RequestAuth, sign_request_auth

from tests.kit.chain import MODEL
from tests.kit.node import HERE, MESSAGES

# ~1,200 prompt tokens at 1,000 wei: more than the 10**6 deposit can pay (InsufficientDeposit)
HUGE = [{"role": "user", "content": "hello " * 1200}]

pytestmark = pytest.mark.chain

PASSWORD = "correct horse battery staple 42"


def _secrets(*accounts: Any) -> list[str]:
    out = [PASSWORD]
    for account in accounts:
        raw = account.key.hex().removeprefix("0x")
        out += [raw, raw.upper(), raw[:32], raw[32:]]  # halves too: a truncated leak is a leak
    return out


def _write_keystore(path: Path, account: Any) -> Path:
    # A real scrypt keystore, with a cost factor low enough for a test (the default takes seconds).
    keystore = Account.encrypt(account.key, PASSWORD, kdf="scrypt", iterations=2**12)
    path.write_text(json.dumps(keystore))
    path.chmod(0o600)
    return path


def test_keys_never_reach_logs_errors_or_metrics(
    market: Any,
    start_node: Any,
    make_client: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    accounts = market.accounts
    node_keystore = _write_keystore(tmp_path / "provider.json", accounts.provider)
    client_keystore = _write_keystore(tmp_path / "client.json", accounts.client)
    node = start_node(
        key_args=["--keystore", str(node_keystore), "--log-level", "DEBUG"],
        env={"TALLYSTICK_NODE_KEYSTORE_PASSWORD": PASSWORD},
    )
    caplog.set_level(logging.DEBUG)
    errors: list[str] = []

    wallet = Wallet.from_keystore(client_keystore, PASSWORD)
    assert wallet.address == accounts.client.address
    client = make_client(wallet.account, "client")
    info = client.channels.open(MODEL, 10**6)
    client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16)
    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=16, stream=True
    )
    errors.append("".join(c.choices[0].delta.content or "" for c in stream if c.choices))
    for bad in (
        lambda: client.chat.completions.create(model=MODEL, messages=HUGE, max_tokens=16),
        lambda: Wallet.from_keystore(client_keystore, "wrong " + PASSWORD),
        lambda: Wallet.from_key(accounts.client.key.hex()[:-2] + "zz"),
    ):
        with pytest.raises(ClientError) as caught:
            bad()
        errors += [str(caught.value), repr(caught.value)]
    theft = RequestAuth.for_request(
        info.channel_id, 3, b"\0" * 32, "POST", "/v1/chat/completions", b"{}", 60
    )
    thief = sign_request_auth(accounts.client2, market.escrow.domain, theft)
    for headers, path, payload in (
        ({"Authorization": thief.header()}, "/v1/chat/completions", {}),
        ({}, "/v1/tally/receipts", {"channelId": info.hex_id, "signature": "0x00"}),
    ):
        errors.append(httpx.post(node.url + path, json=payload, headers=headers).text)
    closed = client.channels.close(info.channel_id)
    errors += [repr(wallet), repr(client), repr(closed)]
    metrics = httpx.get(node.url + "/metrics").text
    assert "tallystick" in metrics  # the scrape is real

    # A wrong keystore password on the node: one line, no key, no password.
    wrong = subprocess.run(
        [sys.executable, str(HERE / "_fake_node.py"), "serve", "--rpc", market.anvil.url,
         "--escrow", market.escrow.address, "--registry", market.registry.address,
         "--keystore", str(node_keystore)],
        env={"TALLYSTICK_NODE_KEYSTORE_PASSWORD": "nope", "PATH": ""},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert wrong.returncode == 2 and wrong.stderr.strip().startswith("error: wrong password")
    node.stop()

    captured = capfd.readouterr()
    observed = {
        "node output": node.log(),
        "client log records": "\n".join(
            f"{r.getMessage()} {r.exc_text or ''} {r.args!r}" for r in caplog.records
        ),
        "process stdout/stderr": captured.out + captured.err,
        "metrics": metrics,
        "exception texts": "\n".join(errors),
        "node CLI error": wrong.stdout + wrong.stderr,
    }
    assert "DEBUG" in observed["node output"].upper()  # the node logged at DEBUG: a real search
    for secret in _secrets(accounts.provider, accounts.client):
        for where, text in observed.items():
            assert secret not in text, f"a secret leaked into the {where}"
