"""Attacks over real HTTP on anvil: a malicious provider that tampers with its answers after
signing, a client using someone else's channel, a request the deposit cannot cover, and a
provider front-running a client's ``open`` with a price rise."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from tallystick.client import BillingDispute, PriceChanged
from tallystick.protocol import (
    ZERO_ROOT,
    Prices,
    RequestAuth,
    UsageRecord,
    cost_of,
    model_id,
    sign_request_auth,
    sign_usage_record,
)

from tests.kit.chain import MODEL, PRICES, same_block_front_run, send_outbidding
from tests.kit.net import ThreadServer
from tests.kit.node import MESSAGES, Tamper, Tampering, fake_node_app, signed_get, signed_post

pytestmark = pytest.mark.chain

DEPOSIT = 10**15


@pytest.fixture
def malicious_node(market: Any, tmp_path: Any) -> Iterator[Callable[[Tamper | None], None]]:
    """``malicious_node(tamper)``: the real node app (in this process, on the listed port)
    behind ``Tampering``, or honest with ``None`` (cheaper than a process for one request)."""
    with contextlib.ExitStack() as servers:

        def start(tamper: Tamper | None) -> None:
            app = fake_node_app(market, tmp_path / "evil.db")
            app = app if tamper is None else Tampering(app, tamper)
            servers.enter_context(ThreadServer(app, market.port))

        yield start


def _resign(market: Any, body: dict[str, Any], **changes: int) -> dict[str, Any]:
    """The provider re-signs a record with inflated counts (it holds its own key)."""
    ts = body["tallystick"]
    record = UsageRecord.from_json(ts["record"])
    record = replace(record, **changes)
    signed = sign_usage_record(market.accounts.provider, market.escrow.domain, record)
    ts["record"], ts["signature"] = signed.record.to_json(), "0x" + signed.signature.hex()
    return body


def _assert_nothing_signed(market: Any, client: Any, info: Any) -> None:
    tally = client.store.tally(info.channel_id)
    assert tally.seq == 0 and tally.receipt is None  # countersigned nothing
    (dispute,) = client.store.disputes(info.channel_id)
    assert dispute.evidence["tallystick"]["record"]["seq"] == 1  # the signed record, kept
    view = signed_get(market.endpoint, client, info, f"/v1/tally/channels/{info.hex_id}").json()
    assert view["countersigned"]["seq"] == 0 and view["lastSeq"] == 1
    assert market.escrow.get_channel(info.channel_id).paid == 0


@pytest.mark.parametrize(
    "attack",
    ["changed_text", "inflated_prompt", "inflated_completion", "extra_ids"],
)
def test_a_provider_tampering_after_signing_gets_a_billing_dispute_and_no_receipt(
    market: Any, malicious_node: Any, make_client: Any, attack: str
) -> None:
    def tamper(body: dict[str, Any]) -> dict[str, Any]:
        rec = body["tallystick"]["record"]
        if attack == "changed_text":
            body["choices"][0]["message"]["content"] += " (and a word we did not generate)"
        elif attack == "inflated_prompt":
            body = _resign(
                market,
                body,
                prompt_tokens=rec["promptTokens"] + 7,
                input_tokens=rec["inputTokens"] + 7,
            )
        elif attack == "inflated_completion":
            body = _resign(
                market,
                body,
                completion_tokens=rec["completionTokens"] + 9,
                output_tokens=rec["outputTokens"] + 9,
            )
        else:  # ids the client never received as text, with counts to match
            body["tallystick"]["completion_token_ids"] += [72, 105]
            body = _resign(
                market,
                body,
                completion_tokens=rec["completionTokens"] + 2,
                output_tokens=rec["outputTokens"] + 2,
            )
        return body

    malicious_node(tamper)
    client = make_client(market.accounts.client, "client")
    info = client.channels.open(MODEL, DEPOSIT)
    earnings = market.earnings()
    with pytest.raises(BillingDispute) as caught:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16)
    assert caught.value.seq == 1 and caught.value.mismatches
    _assert_nothing_signed(market, client, info)
    assert market.earnings() == earnings


def test_a_request_signed_for_someone_elses_channel_is_401(
    market: Any, malicious_node: Any, make_client: Any
) -> None:
    malicious_node(None)
    victim = make_client(market.accounts.client, "victim")
    info = victim.channels.open(MODEL, DEPOSIT)
    thief = market.accounts.client2
    body = json.dumps({"model": MODEL, "messages": MESSAGES, "max_tokens": 8}).encode()
    path = "/v1/chat/completions"
    auth = RequestAuth.for_request(info.channel_id, 1, ZERO_ROOT, "POST", path, body, 60)
    resp = httpx.post(
        f"{market.endpoint}{path}",
        content=body,
        headers={"Authorization": sign_request_auth(thief, market.escrow.domain, auth).header()},
    )
    assert resp.status_code == 401, resp.text
    error = resp.json()["error"]
    assert error["code"] == "invalid_signer" and thief.address in error["message"]
    assert victim.store.tally(info.channel_id).seq == 0
    view = signed_get(market.endpoint, victim, info, f"/v1/tally/channels/{info.hex_id}").json()
    assert view["lastSeq"] == 0  # nothing served, nothing signed


def test_max_tokens_whose_worst_case_exceeds_the_deposit_is_402(
    market: Any, malicious_node: Any, make_client: Any
) -> None:
    malicious_node(None)
    client = make_client(market.accounts.client, "client")
    deposit = 10**6  # 1000 output tokens at 3000 wei would cost 3 * 10**6
    info = client.channels.open(MODEL, deposit)
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 1000}
    resp = signed_post(market.endpoint, client, info, "/v1/chat/completions", body)
    assert resp.status_code == 402, resp.text
    assert resp.json()["error"]["code"] == "insufficient_deposit"
    assert client.store.tally(info.channel_id).seq == 0
    # The SDK never asks for more than the deposit can pay: it lowers max_tokens to fit.
    reply = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1000)
    assert reply.tally is not None and reply.tally.total_cost <= deposit


def _front_run(market: Any, client: Any, changed: Prices) -> None:
    """The provider's set_price is mined just before the client's open (same client code)."""
    chain = client.chain
    original = chain.open_channel

    def open_after_price_change(*args: Any, **kwargs: Any) -> Any:
        market.registry.set_price(market.accounts.provider, model_id(MODEL), changed)
        return original(*args, **kwargs)

    chain.open_channel = open_after_price_change


def _nothing_moved(market: Any, client: Any, before: tuple[int, int]) -> None:
    assert (len(market.escrow.channels_opened()), _escrow_eth(market)) == before
    assert client.channels.list() == []


def _escrow_eth(market: Any) -> int:
    return int(market.w3.eth.get_balance(market.escrow.address))


def test_front_run_price_rise_is_refused(
    market: Any, malicious_node: Any, make_client: Any
) -> None:
    """setPrice mined in the block before the client's open: refused before anything is sent."""
    malicious_node(None)
    client = make_client(market.accounts.client, "client")
    raised = Prices(PRICES.input_per_m * 10, PRICES.output_per_m * 10)
    _front_run(market, client, raised)
    before = (len(market.escrow.channels_opened()), _escrow_eth(market))
    balance = int(market.w3.eth.get_balance(market.accounts.client.address))
    with pytest.raises(PriceChanged) as caught:
        client.channels.open(
            MODEL, DEPOSIT, max_input_price=PRICES.input_per_m, max_output_price=PRICES.output_per_m
        )
    assert (caught.value.accepted, caught.value.current) == (PRICES, raised)
    _nothing_moved(market, client, before)
    # The gas estimate reverted, so no transaction was even sent: not a wei of gas was spent.
    assert int(market.w3.eth.get_balance(market.accounts.client.address)) == balance


def test_front_run_in_the_same_block_is_refused_and_costs_only_gas(
    market: Any, malicious_node: Any, make_client: Any
) -> None:
    """The attack itself: the provider sees the client's open in the mempool and outbids it."""
    malicious_node(None)
    client = make_client(market.accounts.client, "client")
    w3, provider = market.w3, market.accounts.provider
    raised = Prices(PRICES.input_per_m, PRICES.output_per_m * 2)
    set_price = market.registry.contract.functions.setPrice(
        model_id(MODEL), raised.input_per_m, raised.output_per_m
    )
    before = (len(market.escrow.channels_opened()), _escrow_eth(market))
    balance = int(w3.eth.get_balance(market.accounts.client.address))
    with pytest.raises(PriceChanged) as caught:
        same_block_front_run(
            w3,
            lambda: client.channels.open(MODEL, DEPOSIT),
            lambda: send_outbidding(w3, provider, set_price),
        )
    assert (caught.value.accepted, caught.value.current) == (PRICES, raised)
    block = w3.eth.get_block("latest", full_transactions=True)
    first, second = block["transactions"]
    assert (first["from"], second["from"]) == (provider.address, market.accounts.client.address)
    mined = w3.eth.get_transaction_receipt(second["hash"])
    assert mined["status"] == 0, "the client's open was mined after the setPrice, and reverted"
    _nothing_moved(market, client, before)
    gas = int(mined["gasUsed"]) * int(mined["effectiveGasPrice"])
    assert int(w3.eth.get_balance(market.accounts.client.address)) == balance - gas


def test_a_price_lowered_before_open_is_taken_at_the_snapshot(
    market: Any, malicious_node: Any, make_client: Any
) -> None:
    """The limits bound the price from above only: a cut before the open benefits the client."""
    malicious_node(None)
    client = make_client(market.accounts.client, "client")
    lowered = Prices(PRICES.input_per_m // 2, PRICES.output_per_m // 3)
    _front_run(market, client, lowered)
    info = client.channels.open(MODEL, DEPOSIT)
    assert market.escrow.get_channel(info.channel_id).prices == lowered
    assert info.prices == lowered, "the store keeps the escrow's snapshot, not the offer"
    reply = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16)
    rec = reply.tally.record.record
    assert reply.tally.cost == cost_of(rec.input_tokens, rec.output_tokens, lowered)
