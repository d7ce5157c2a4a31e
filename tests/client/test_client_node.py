"""The whole SDK against the real node (create_app + FakeEngine) over real HTTP, on anvil."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tallystick.client import Chain, Tallystick, Wallet
from tallystick.protocol import Prices, cost_of

pytestmark = pytest.mark.chain
PRICES = Prices(input_per_m=3_000_000_000, output_per_m=9_000_000_000)
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def node(node_server: Any) -> dict[str, Any]:
    """A real node serving FakeEngine on a free port, listed on-chain by ``accounts.provider``."""
    from tallystick.node.engines import FakeEngine

    engine = FakeEngine(model_name="fake-model")
    return {"endpoint": node_server(engine, PRICES), "engine": engine}


@pytest.fixture
def client(
    node: dict[str, Any], deployment: Any, accounts: Any, w3: Any, tmp_path: Path
) -> Iterator[Tallystick]:
    chain = Chain(w3, deployment.registry.address, deployment.escrow.address)
    with Tallystick(Wallet(accounts.client), tmp_path / "client.db", chain=chain) as c:
        yield c


def test_verified_chat_through_sdk_and_openai_then_cooperative_close(
    client: Tallystick, node: dict[str, Any], deployment: Any, accounts: Any
) -> None:
    deposit = 10**15
    info = client.channels.open("fake-model", deposit)  # checks /v1/models against the chain
    reply = client.chat.completions.create(model="fake-model", messages=MESSAGES, max_tokens=32)
    assert reply.choices[0].message.content and reply.tally.record.record.seq == 1
    stream = client.chat.completions.create(
        model="fake-model", messages=MESSAGES, max_tokens=32, stream=True
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed == reply.choices[0].message.content
    assert stream.tally is not None and stream.tally.record.record.seq == 2

    sdk = client.openai(info.channel_id)
    plain = sdk.chat.completions.create(model="fake-model", messages=MESSAGES, max_tokens=32)
    assert plain.choices[0].message.content == streamed
    chunks = sdk.chat.completions.create(
        model="fake-model", messages=MESSAGES, max_tokens=32, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == streamed
    text = client.completions.create(model="fake-model", prompt="hello world", max_tokens=8)
    assert text.tally.record.record.seq == 5

    tally = client.store.tally(info.channel_id)
    assert tally.seq == 5 and tally.delivered
    view = client.node(node["endpoint"]).channel(info.channel_id, client.biller.authorizer(info))
    # The node holds exactly what the client countersigned, and nothing unpaid.
    assert view["lastSeq"] == view["countersigned"]["seq"] == 5
    assert view["countersigned"]["inputTokens"] == tally.input_tokens
    assert view["countersigned"]["outputTokens"] == tally.output_tokens
    assert view["usageRoot"] == "0x" + tally.usage_root.hex() and view["unpaid"] == 0

    spent = cost_of(tally.input_tokens, tally.output_tokens, PRICES)
    closed = client.channels.close(info.channel_id)
    assert (closed.paid, closed.refund) == (spent, deposit - spent)
    assert deployment.escrow.earnings(accounts.provider.address) == spent
