"""On anvil: settlement split into claims that fit a gas budget with batched reads, the
zero-receipt cooperative close, and listings that show in /v1/models as soon as they change."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from tallystick.node import (
    ChannelCache,
    NodeMetrics,
    Settings,
    SettlementWorker,
    SqliteLedger,
    StoredReceipt,
    create_app,
)
from tallystick.node._claim_plan import GAS_BASE, GAS_FIRST_CLAIM
from tallystick.node._escrow import EscrowChain
from tallystick.node.engines import FakeEngine
from tallystick.protocol import (
    ETH,
    ZERO_ROOT,
    ChannelStatus,
    Prices,
    Receipt,
    SignedReceipt,
    cost_of,
    model_id,
    sign_receipt,
)

from tests.kit.chain import key_hex, list_model, open_eth_channel, register_and_list
from tests.kit.net import ThreadServer
from tests.kit.node import RawChannel

pytestmark = pytest.mark.chain

MODEL = "fake-model"
PRICES = Prices(input_per_m=10**12, output_per_m=2 * 10**12)
DEPOSIT = 10**17


def _settings(anvil: Any, deployment: Any, provider: Any, tmp_path: Any, **extra: Any) -> Settings:
    return Settings(
        rpc=anvil.url,
        escrow=deployment.escrow.address,
        registry=deployment.registry.address,
        key=key_hex(provider),
        db=tmp_path / "node.db",
        **extra,
    )


def test_a_settlement_pass_claims_in_transactions_within_the_gas_budget(
    deployment, accounts, anvil, tmp_path
):
    provider, client = accounts.provider, accounts.client
    register_and_list(deployment, provider, "http://127.0.0.1", MODEL, PRICES)
    escrow = deployment.escrow
    ledger = SqliteLedger(tmp_path / "ledger.db")
    ids = [open_eth_channel(deployment, client, provider, MODEL, PRICES, DEPOSIT) for _ in range(8)]
    for i, cid in enumerate(ids):
        receipt = Receipt(cid, 1000 * (i + 1), 50, bytes([i + 1]) * 32)
        ledger.add_receipt(StoredReceipt(sign_receipt(client, escrow.domain, receipt), 1, 0.0))
    budget = GAS_BASE + 3 * GAS_FIRST_CLAIM
    settings = _settings(anvil, deployment, provider, tmp_path, settle_max_gas_per_tx=budget)

    async def settle() -> Any:
        chain = await EscrowChain.connect(settings, provider)
        # The batched read agrees with one read per channel.
        batched = await chain.read_channels(ids)
        assert batched == {cid: await chain.channel(cid) for cid in ids}
        cache = ChannelCache(chain, ledger, 0)
        worker = SettlementWorker(
            chain=chain, ledger=ledger, cache=cache, metrics=NodeMetrics(), settings=settings
        )
        return await worker.settle(force=True)

    outcomes = asyncio.run(settle())
    assert [len(o.claimed) for o in outcomes] == [3, 3, 2]
    assert all(o.gas_used <= budget for o in outcomes), [o.gas_used for o in outcomes]
    assert len({o.tx_hash for o in outcomes}) == 3
    # The most valuable receipts went in the first transaction.
    assert set(outcomes[0].claimed) == set(ids[5:])
    total = 0
    for i, cid in enumerate(ids):
        owed = cost_of(1000 * (i + 1), 50, PRICES)
        assert escrow.get_channel(cid).paid == owed
        total += owed
    assert escrow.earnings(provider.address, ETH) == total
    ledger.close()


def test_an_unused_channel_closes_cooperatively_with_a_full_refund(
    deployment, accounts, anvil, w3, tmp_path
):
    provider, client = accounts.provider, accounts.client
    engine = FakeEngine()
    register_and_list(deployment, provider, "http://127.0.0.1", MODEL, PRICES)
    escrow = deployment.escrow
    cid = open_eth_channel(deployment, client, provider, MODEL, PRICES, DEPOSIT)
    settings = _settings(anvil, deployment, provider, tmp_path, settle_interval=3600)
    zero = sign_receipt(client, escrow.domain, Receipt(cid, 0, 0, ZERO_ROOT))
    raw = RawChannel(client, escrow.domain, cid)
    with (
        ThreadServer(create_app(settings, engine=engine)) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        resp = raw.post(http, f"/v1/tally/channels/0x{cid.hex()}/close", zero.to_json())
        assert resp.status_code == 200, resp.text
        provider_sig = bytes.fromhex(resp.json()["providerSignature"][2:])
    balance = w3.eth.get_balance(client.address)
    closed = escrow.close_cooperative(
        client, SignedReceipt(zero.receipt, zero.signature), provider_sig
    )
    assert closed.value == DEPOSIT  # the refund
    fee = closed.gas_used * int(closed.receipt["effectiveGasPrice"])
    assert w3.eth.get_balance(client.address) == balance + DEPOSIT - fee
    state = escrow.get_channel(cid)
    assert (state.status, state.paid) == (ChannelStatus.CLOSED, 0)
    assert escrow.earnings(provider.address, ETH) == 0


def test_models_shows_a_listing_made_after_start_and_a_new_price_at_once(
    deployment, accounts, anvil, tmp_path
):
    provider = accounts.provider
    engine = FakeEngine()
    deployment.registry.register(provider, "http://127.0.0.1")
    settings = _settings(
        anvil, deployment, provider, tmp_path, settle_interval=3600, poll_interval=0.1
    )

    def pricing(http: httpx.Client) -> Any:
        return http.get("/v1/models").json()["data"][0]["pricing"]

    def wait_for(http: httpx.Client, expected: dict[str, Any], within: float) -> float:
        started = time.monotonic()
        while pricing(http) != expected:
            assert time.monotonic() - started < within, pricing(http)
            time.sleep(0.05)
        return time.monotonic() - started

    with (
        ThreadServer(create_app(settings, engine=engine)) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        assert pricing(http) is None  # not listed yet (and the miss is cached)
        list_model(deployment, provider, MODEL, PRICES)
        listed = {"input_per_million": 10**12, "output_per_million": 2 * 10**12, "token": ETH}
        wait_for(http, listed, within=2.0)
        new = Prices(3 * 10**12, 4 * 10**12)
        deployment.registry.set_price(provider, model_id(MODEL), new)
        repriced = {"input_per_million": 3 * 10**12, "output_per_million": 4 * 10**12}
        wait_for(http, {**repriced, "token": ETH}, within=3.0)
