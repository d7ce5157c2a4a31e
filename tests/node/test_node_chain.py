"""The node against a real chain: anvil, the real contracts, a real uvicorn server.

Requests carry real request signatures, receipts are countersigned with the protocol package, and
the provider's on-chain earnings must equal the cost of the countersigned totals.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from tallystick.node import Settings, create_app
from tallystick.node.cli import main
from tallystick.protocol import (
    ETH,
    cost_of,
)

from tests.kit.chain import MODEL
from tests.kit.net import ThreadServer
from tests.kit.node import NODE_PRICES, RawChannel, chain_args

pytestmark = pytest.mark.chain

PRICES = NODE_PRICES


@pytest.fixture
def node(
    listed_channel: Any, anvil: Any, accounts: Any, tmp_path: Any
) -> Iterator[tuple[ThreadServer, Settings]]:
    deployment, engine, _ = listed_channel
    settings = Settings(
        rpc=anvil.url,
        escrow=deployment.escrow.address,
        registry=deployment.registry.address,
        key="0x" + accounts.provider.key.hex().removeprefix("0x"),
        db=tmp_path / "node.db",
        settle_interval=3600,
        poll_interval=0.2,
        claim_gas_multiple=0,
    )
    with ThreadServer(create_app(settings, engine=engine)) as server:
        yield server, settings


def _chat(
    http: httpx.Client, raw: RawChannel, receipt: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "What is a tally stick?"}],
        **extra,
    }
    resp = raw.post(http, "/v1/chat/completions", body, receipt)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_requests_are_paid_by_settle_and_claim_many(listed_channel, node, accounts):
    deployment, _, cid = listed_channel
    server, settings = node
    escrow = deployment.escrow
    domain = escrow.domain
    raw = RawChannel(accounts.client, domain, cid)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        receipt = None
        for _ in range(3):
            body = _chat(http, raw, receipt, max_tokens=8)
            receipt = raw.countersign(body, delivered=False)
        assert http.post("/v1/tally/receipts", json=receipt).status_code == 200
        # a request the node must refuse: the model is another one's
        r = raw.post(
            http,
            "/v1/chat/completions",
            {"model": "other", "messages": [{"role": "user", "content": "x"}]},
            receipt,
        )
        assert r.status_code == 404
    before = escrow.earnings(accounts.provider.address, ETH)
    settle = ["settle", *chain_args(settings.rpc, deployment, accounts.provider, settings.db)]
    result = CliRunner().invoke(
        main,
        settle,
    )
    assert result.exit_code == 0, result.output
    assert "claimed" in result.output
    owed = cost_of(receipt["inputTokens"], receipt["outputTokens"], PRICES)
    assert escrow.earnings(accounts.provider.address, ETH) - before == owed
    state = escrow.get_channel(cid)
    assert (state.claimed_input, state.claimed_output) == (
        receipt["inputTokens"],
        receipt["outputTokens"],
    )
    again = CliRunner().invoke(
        main,
        settle,
    )
    assert again.exit_code == 0 and "nothing to claim" in again.output


def test_close_request_makes_the_worker_claim_before_closes_at(listed_channel, node, accounts):
    deployment, _, cid = listed_channel
    server, _ = node
    escrow = deployment.escrow
    raw = RawChannel(accounts.client, escrow.domain, cid)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        body = _chat(http, raw, max_tokens=6)
        receipt = raw.countersign(body)
        assert http.post("/v1/tally/receipts", json=receipt).status_code == 200
        closes_at = escrow.request_close(accounts.client, cid).value
        owed = cost_of(receipt["inputTokens"], receipt["outputTokens"], PRICES)
        deadline = time.monotonic() + 15
        while escrow.get_channel(cid).paid < owed:
            assert time.monotonic() < deadline, "the worker did not claim the closing channel"
            time.sleep(0.1)
        assert escrow.get_channel(cid).paid == owed
        assert int(escrow.w3.eth.get_block("latest")["timestamp"]) < closes_at
        r = raw.post(
            http,
            "/v1/chat/completions",
            {"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
        )
        assert r.status_code == 402 and r.json()["error"]["code"] == "channel_closing"
