"""The chain's RPC goes away: the node keeps serving from cached channel state within its credit
rule, its settlement fails and retries, and claims everything once the chain is back.

The node reaches anvil only through a TCP proxy that the test cuts (every connection reset,
new ones refused) for a few seconds, or a minute under ``--long``.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from tallystick.protocol import cost_of

from tests.kit.chain import MODEL, PRICES
from tests.kit.net import wait_for
from tests.kit.node import MESSAGES, signed_post

pytestmark = pytest.mark.chain

DEPOSIT = 10**15
SMALL_DEPOSIT = 10**6  # a few requests of 16 tokens; not a 2000-token worst case


def _chat(
    url: str, client: Any, info: Any, max_tokens: int, seq: int | None = None
) -> httpx.Response:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": max_tokens}
    return signed_post(url, client, info, "/v1/chat/completions", body, seq=seq)


def test_node_serves_through_an_rpc_outage_and_settles_when_the_chain_is_back(
    market: Any, start_node: Any, make_client: Any, rpc_proxy: Any, long_mode: bool
) -> None:
    node = start_node(rpc=rpc_proxy.url)
    client = make_client(market.accounts.client, "client")
    info = client.channels.open(MODEL, DEPOSIT)
    for _ in range(3):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16)
    # A second channel driven by hand, to probe the credit rule during the outage.
    other = make_client(market.accounts.client2, "other")
    other_info = other.channels.open(MODEL, DEPOSIT)
    assert _chat(node.url, other, other_info, 8).status_code == 200  # cached before the cut
    small = make_client(market.accounts[6], "small")
    small_info = small.channels.open(MODEL, SMALL_DEPOSIT)
    small.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16)
    earnings_before = market.earnings()

    rpc_proxy.cut()
    outage = 60.0 if long_mode else 4.0
    ends = time.monotonic() + outage
    served = 0
    while time.monotonic() < ends:
        reply = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16)
        assert reply.tally is not None
        served += 1
        time.sleep(0.1)
    # The credit rule still holds without the chain: one unpaid record, and the deposit cap.
    unpaid = _chat(node.url, other, other_info, 8, seq=2)
    assert unpaid.status_code == 402, unpaid.text
    assert unpaid.json()["error"]["code"] == "receipt_required"
    too_big = _chat(node.url, small, small_info, 2000)
    assert too_big.status_code == 402, too_big.text
    assert too_big.json()["error"]["code"] == "insufficient_deposit"
    # Nothing could be claimed while the chain was away.
    assert market.earnings() == earnings_before
    assert "settlement: chain error" in node.log()

    rpc_proxy.restore()
    tally = client.store.tally(info.channel_id)
    spent = cost_of(tally.input_tokens, tally.output_tokens, PRICES)

    def settled() -> bool:
        return bool(market.escrow.get_channel(info.channel_id).paid == spent)

    wait_for(settled, 90 if long_mode else 30, "the worker to claim after the outage")
    assert served >= 5
    state = market.escrow.get_channel(info.channel_id)
    assert (state.claimed_input, state.claimed_output) == (tally.input_tokens, tally.output_tokens)
    # And the node serves new requests on fresh chain state.
    reply = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16)
    assert reply.tally is not None


def test_a_black_holed_rpc_costs_the_node_one_timeout_and_never_stalls_serving(
    market: Any, start_node: Any, make_client: Any, rpc_proxy: Any, long_mode: bool
) -> None:
    """The RPC swallows requests without an answer or a reset (a partition, a wedged server):
    only the node's ``rpc_timeout`` can notice. Serving goes on from cached state without
    waiting for it, settlement logs the timeout and retries, and claims once the RPC is back."""
    rpc_timeout = 3.0
    node = start_node(rpc=rpc_proxy.url, env={"TALLYSTICK_NODE_RPC_TIMEOUT": str(rpc_timeout)})
    client = make_client(market.accounts.client, "client")
    info = client.channels.open(MODEL, DEPOSIT)
    for _ in range(3):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16)
    earnings_before = market.earnings()

    rpc_proxy.blackhole()
    ends = time.monotonic() + (30.0 if long_mode else 2 * rpc_timeout)
    slowest = 0.0
    served = 0
    while time.monotonic() < ends:
        asked = time.monotonic()
        reply = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16)
        slowest = max(slowest, time.monotonic() - asked)
        assert reply.tally is not None
        served += 1
        time.sleep(0.1)
    # A request waits a second at most for a channel refresh, never for the RPC's timeout.
    assert slowest < rpc_timeout - 0.5, slowest
    assert served >= 5
    wait_for(lambda: "settlement: chain error" in node.log(), 2 * rpc_timeout, "a chain error")
    assert "timed out" in node.log()
    assert market.earnings() == earnings_before

    rpc_proxy.restore()
    tally = client.store.tally(info.channel_id)
    spent = cost_of(tally.input_tokens, tally.output_tokens, PRICES)

    def settled() -> bool:
        return bool(market.escrow.get_channel(info.channel_id).paid == spent)

    wait_for(settled, 30 + 2 * rpc_timeout, "the worker to claim after the outage")
    state = market.escrow.get_channel(info.channel_id)
    assert (state.claimed_input, state.claimed_output) == (tally.input_tokens, tally.output_tokens)


def test_with_two_rpc_urls_a_dead_one_costs_nothing_and_every_failure_is_a_metric(
    market: Any, start_node: Any, make_client: Any, rpc_proxy: Any, tmp_path: Any
) -> None:
    """Node and client each get two RPC URLs; the first dies. A channel opened after that is
    served (it needs the chain: without failover it would be a 503), and claimed."""
    from tallystick.client import Chain, Tallystick, Wallet
    from tallystick.protocol import rpc_label

    both = f"{rpc_proxy.url},{market.anvil.url}"
    node = start_node(rpc=both)
    client = make_client(market.accounts.client, "client")
    client.channels.open(MODEL, DEPOSIT)
    client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16)

    rpc_proxy.cut()
    chain = Chain.connect(both, market.registry.address, market.escrow.address)
    with Tallystick(Wallet(market.accounts.client2), tmp_path / "late.db", chain=chain) as late:
        info = late.channels.open(MODEL, DEPOSIT)  # the client fails over too
        for _ in range(3):
            assert late.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16).tally
        late.biller.deliver(info)
        tally = late.store.tally(info.channel_id)
        assert chain.rpc_failures().get((rpc_label(0, rpc_proxy.url), "connection"), 0) >= 1
    spent = cost_of(tally.input_tokens, tally.output_tokens, PRICES)
    wait_for(
        lambda: market.escrow.get_channel(info.channel_id).paid == spent,
        30,
        "the worker to claim through the second RPC",
    )
    metrics = httpx.get(node.url + "/metrics", timeout=5).text
    label = rpc_label(0, rpc_proxy.url)
    line = next(
        (
            x
            for x in metrics.splitlines()
            if x.startswith("tallystick_rpc_failures_total{") and f'rpc="{label}"' in x
        ),
        None,
    )
    assert line is not None and float(line.rsplit(" ", 1)[1]) >= 1, metrics
    assert "trying the next URL" in node.log()
