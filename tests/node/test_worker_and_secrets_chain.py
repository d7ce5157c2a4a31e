"""On anvil: the periodic gas-threshold claim, and the provider key never leaking anywhere."""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from eth_account import Account
from tallystick.node import Settings, create_app, load_settings
from tallystick.node.cli import main
from tallystick.node.engines import FakeEngine
from tallystick.protocol import (
    ETH,
    Prices,
    cost_of,
)

from tests.kit.chain import open_eth_channel, register_and_list
from tests.kit.net import ThreadServer
from tests.kit.node import RawChannel

pytestmark = pytest.mark.chain

MODEL = "fake-model"
MESSAGES = [{"role": "user", "content": "What is a tally stick?"}]
MAX_TOKENS = 8


def _market(deployment: Any, accounts: Any, engine: FakeEngine, prices: Prices) -> bytes:
    provider = accounts.provider
    register_and_list(deployment, provider, "http://127.0.0.1", MODEL, prices)
    return open_eth_channel(deployment, accounts.client, provider, MODEL, prices, 10**18)


def _chat(http: httpx.Client, raw: RawChannel, **extra: Any) -> dict[str, Any]:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": MAX_TOKENS, **extra}
    resp = raw.post(http, "/v1/chat/completions", body)
    assert resp.status_code == 200, resp.text
    if extra.get("stream"):
        last = [ln for ln in resp.text.split("\n\n") if ln.startswith("data: {")][-1]
        return raw.served(dict(json.loads(last[len("data: ") :])))
    return raw.served(dict(resp.json()))


def test_worker_claims_once_unclaimed_value_exceeds_the_gas_multiple(
    deployment, accounts, anvil, w3, tmp_path
):
    engine = FakeEngine(reply="Paid per token, settled on chain.")
    per_request = len(engine.counter.chat_prompt_ids(MESSAGES)) + MAX_TOKENS
    # One request is worth about a quarter of a claim's gas cost (~70k gas); nine are worth
    # about twice it, whatever the exact gas used (50k..100k).
    target = w3.eth.gas_price * 70_000 // 4
    price = math.ceil(target * 1_000_000 / per_request)
    prices = Prices(price, price)
    cid = _market(deployment, accounts, engine, prices)
    escrow = deployment.escrow
    settings = Settings(
        rpc=anvil.url,
        escrow=escrow.address,
        registry=deployment.registry.address,
        key="0x" + accounts.provider.key.hex().removeprefix("0x"),
        db=tmp_path / "node.db",
        settle_interval=0.3,
        poll_interval=0.1,
        claim_gas_multiple=1.0,
        credit_requests=16,
    )
    raw = RawChannel(accounts.client, escrow.domain, cid)
    with (
        ThreadServer(create_app(settings, engine=engine)) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        first = raw.countersign(_chat(http, raw))
        assert http.post("/v1/tally/receipts", json=first).status_code == 200
        value = cost_of(first["inputTokens"], first["outputTokens"], prices)
        assert value < w3.eth.gas_price * 50_000
        time.sleep(2.0)  # several settle intervals: below the threshold, nothing is claimed
        assert escrow.get_channel(cid).paid == 0
        body: dict[str, Any] = {}
        for _ in range(8):
            body = _chat(http, raw)
        last = raw.countersign(body)
        assert http.post("/v1/tally/receipts", json=last).status_code == 200
        owed = cost_of(last["inputTokens"], last["outputTokens"], prices)
        deadline = time.monotonic() + 15
        while escrow.get_channel(cid).paid < owed:
            assert time.monotonic() < deadline, "the worker did not claim above the threshold"
            time.sleep(0.1)
    state = escrow.get_channel(cid)
    assert state.paid == owed == escrow.earnings(accounts.provider.address, ETH)
    assert (state.claimed_input, state.claimed_output) == (
        last["inputTokens"],
        last["outputTokens"],
    )


def test_the_provider_key_and_keystore_password_never_leak(
    deployment, accounts, anvil, tmp_path, caplog, monkeypatch
):
    caplog.set_level(logging.DEBUG)
    provider, client = accounts.provider, accounts.client
    key_hex = provider.key.hex().removeprefix("0x")
    password = "correct horse battery staple 42"
    keystore = tmp_path / "provider.json"
    keystore.write_text(json.dumps(Account.encrypt(provider.key, password)))
    secrets = [key_hex.lower(), key_hex.upper(), password]
    engine = FakeEngine(reply="Secrets stay secret.")
    cid = _market(deployment, accounts, engine, Prices(10**12, 2 * 10**12))
    escrow = deployment.escrow
    env = {"TALLYSTICK_NODE_KEYSTORE_PASSWORD": password}
    cli = {
        "rpc": anvil.url,
        "escrow": escrow.address,
        "registry": deployment.registry.address,
        "keystore": keystore,
        "db": tmp_path / "node.db",
        "settle_interval": 0.3,
        "poll_interval": 0.1,
        "claim_gas_multiple": 0,
    }
    settings = load_settings(cli, env=env)
    with_key = load_settings({**cli, "keystore": None, "key": "0x" + key_hex}, env={})
    seen: list[str] = [
        repr(settings),
        str(settings),
        repr(with_key),
        str(with_key.model_dump()),
        with_key.model_dump_json(),
    ]
    raw = RawChannel(client, escrow.domain, cid)
    monkeypatch.setenv("TALLYSTICK_NODE_KEYSTORE_PASSWORD", password)
    with (
        ThreadServer(create_app(settings, engine=engine)) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        first = raw.countersign(_chat(http, raw))
        assert http.post("/v1/tally/receipts", json=first).status_code == 200
        streamed = _chat(http, raw, stream=True)
        receipt = raw.countersign(streamed, delivered=False)
        seen.append(json.dumps(streamed))
        for bad in (
            http.post("/v1/chat/completions", json={"model": MODEL}, headers={}),
            http.post("/v1/chat/completions", content=b"{", headers={"Authorization": "x"}),
            raw.post(
                http, "/v1/chat/completions", {"model": MODEL, "messages": MESSAGES}
            ),  # 402: receipt required
            http.post("/v1/tally/receipts", json={**receipt, "signature": "0x" + "00" * 65}),
            http.get("/v1/nothing"),
        ):
            assert bad.status_code >= 400
            seen.append(bad.text)
        assert http.post("/v1/tally/receipts", json=receipt).status_code == 200
        owed = cost_of(receipt["inputTokens"], receipt["outputTokens"], Prices(10**12, 2 * 10**12))
        deadline = time.monotonic() + 15
        while escrow.get_channel(cid).paid < owed:
            assert time.monotonic() < deadline, "the worker did not settle"
            time.sleep(0.1)
        seen += [http.get("/metrics").text, http.get("/health").text]
    args = ["--rpc", anvil.url, "--escrow", escrow.address, "--registry"]
    args += [deployment.registry.address, "--keystore", str(keystore), "--db", str(cli["db"])]
    runner = CliRunner()
    for command, environ, code in (
        (["status"], env, 0),
        (["settle"], env, 0),
        (["withdraw"], env, 0),
        (["status"], {"TALLYSTICK_NODE_KEYSTORE_PASSWORD": password + "x"}, 2),
        (["status", "--key", "0x" + key_hex[:-2]], {}, 2),
    ):
        result = runner.invoke(main, [*command, *args], env=environ)
        assert result.exit_code == code, result.output
        seen.append(result.output)
    seen.append(caplog.text)
    assert "claimMany" in caplog.text  # the settlement really ran and logged
    for text in seen:
        for secret in secrets:
            assert secret not in text
        assert key_hex[:-2] not in text  # not even the typo'd key the CLI refused
