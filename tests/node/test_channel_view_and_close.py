"""The channel view (§8.2), stored timings, the zero-receipt close and chain outages (unit
tests over a FakeEngine and the in-memory chain)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import pytest
from eth_account import Account
from tallystick.node.engines import FakeEngine
from tallystick.protocol import (
    ZERO_ROOT,
    ChannelStatus,
    Receipt,
    SignedReceipt,
    cost_of,
    recover_receipt_signer,
    sign_receipt,
)

from tests.kit.node_harness import open_channel

pytestmark = pytest.mark.anyio


def _path(h, suffix: str = "") -> str:
    return f"/v1/tally/channels/0x{h.channel_id.hex()}{suffix}"


async def _view(h) -> dict:
    resp = await h.http.get(_path(h), headers=h.auth())
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def _zero(h, account=None) -> dict:
    receipt = Receipt(h.channel_id, 0, 0, ZERO_ROOT)
    return sign_receipt(account or h.client, h.chain.domain, receipt).to_json()


async def test_record_endpoint_returns_the_timings_sent_with_the_completion(make_node):
    async with make_node(engine=FakeEngine(reply="timed reply", token_delay=0.002)) as h:
        body = (await h.chat()).json()
        sent = body["tallystick"]["timings"]
        assert set(sent) == {"ttft_ms", "itl_ms", "total_ms"} and sent["total_ms"] > 0
        got = (await h.http.get(_path(h, "/records/1"), headers=h.auth())).json()
        assert got["timings"] == sent


async def test_view_separates_served_and_countersigned_roots(make_node):
    async with make_node(credit_requests=2) as h:
        first = await h.paid_chat()
        second = (await h.chat("again")).json()
        view = await _view(h)
        first_root = "0x" + h.ledger.get_record(h.channel_id, 1).usage_root.hex()
        served_root = "0x" + h.ledger.get_record(h.channel_id, 2).usage_root.hex()
        assert view["countersigned"]["usageRoot"] == first_root
        assert view["served"]["usageRoot"] == view["usageRoot"] == served_root
        assert view["countersigned"]["seq"] == 1 and view["lastSeq"] == 2
        rec = second["tallystick"]["record"]
        assert view["served"]["inputTokens"] == rec["inputTokens"]
        assert view["countersigned"]["inputTokens"] == first["tallystick"]["record"]["inputTokens"]


async def test_view_status_is_the_chains_and_a_close_agreement_is_a_flag(make_node):
    async with make_node() as h:
        body = await h.paid_chat()
        view = await _view(h)
        assert (view["status"], view["closeAgreed"]) == ("open", False)
        close = await h.http.post(_path(h, "/close"), headers=h.auth(), json=h.countersign(body))
        assert close.status_code == 200, close.text
        view = await _view(h)
        assert (view["status"], view["closeAgreed"]) == ("open", True)  # not closed on chain yet
        h.chain.request_close(h.channel_id)  # read fresh, not from the 60 s cache
        assert (await _view(h))["status"] == "closing"
        info = h.chain.channels[h.channel_id]
        h.chain.channels[h.channel_id] = replace(info, status=ChannelStatus.CLOSED)
        assert (await _view(h))["status"] == "closed"


async def test_credit_left_counts_requests_in_flight(make_node):
    engine = FakeEngine(reply="a slow reply with several tokens", token_delay=0.05)
    async with make_node(engine=engine, credit_requests=2) as h:
        deposit = h.chain.channels[h.channel_id].deposit
        request = asyncio.create_task(h.chat(max_tokens=1000))
        while engine.stats()["running"] == 0:
            await asyncio.sleep(0.01)
        view = await _view(h)
        prompt = h.engine.counter.chat_prompt_ids([{"role": "user", "content": "Hi"}])
        worst = cost_of(len(prompt), 1000, h.chain.channels[h.channel_id].prices)
        assert view["inFlight"] == 1
        assert view["creditLeft"] == deposit - worst
        await request
        view = await _view(h)
        assert view["inFlight"] == 0 and view["creditLeft"] == deposit - view["served"]["cost"]


async def test_the_zero_receipt_of_an_unused_channel_is_countersigned(make_node):
    async with make_node() as h:
        zero = _zero(h)
        close = await h.http.post(_path(h, "/close"), headers=h.auth(), json=zero)
        assert close.status_code == 200, close.text
        got = close.json()
        assert got["seq"] == 0 and got["receipt"] == zero
        sig = bytes.fromhex(got["providerSignature"][2:])
        signed = SignedReceipt(Receipt(h.channel_id, 0, 0, ZERO_ROOT), sig)
        assert recover_receipt_signer(h.chain.domain, signed) == h.provider.address
        after = await h.chat()
        assert after.status_code == 402 and after.json()["error"]["code"] == "channel_closing"
        assert h.ledger.last_receipt(h.channel_id) is None  # nothing to claim


async def test_the_zero_receipt_is_refused_once_served_or_in_flight_or_by_a_stranger(make_node):
    engine = FakeEngine(reply="a slow reply with several tokens", token_delay=0.05)
    async with make_node(engine=engine, credit_requests=2) as h:
        stranger = Account.from_key("0x" + "33" * 32)
        r = await h.http.post(_path(h, "/close"), headers=h.auth(), json=_zero(h, stranger))
        assert r.status_code == 400 and r.json()["error"]["code"] == "receipt_signer_mismatch"
        request = asyncio.create_task(h.chat())
        while engine.stats()["running"] == 0:
            await asyncio.sleep(0.01)
        r = await h.http.post(_path(h, "/close"), headers=h.auth(), json=_zero(h))
        assert r.status_code == 409 and r.json()["error"]["code"] == "receipt_not_final"
        assert (await request).status_code == 200
        r = await h.http.post(_path(h, "/close"), headers=h.auth(), json=_zero(h))
        assert r.status_code == 409 and r.json()["error"]["code"] == "receipt_not_final"
        assert (await h.chat()).status_code == 200  # no close was agreed


async def test_an_unseen_channel_during_a_chain_outage_is_503_chain_unavailable(make_node):
    async with make_node() as h:
        assert (await h.chat()).status_code == 200  # the open channel is cached
        other = Account.from_key("0x" + "44" * 32)
        cid = open_channel(h.chain, other, nonce=7)
        h.chain.down = True
        headers = h.auth(other, cid)
        body = {"model": "fake-model", "messages": [{"role": "user", "content": "x"}]}
        r = await h.http.post("/v1/chat/completions", json=body, headers=headers)
        assert r.status_code == 503, r.text
        error = r.json()["error"]
        assert error["code"] == "chain_unavailable" and error["type"] == "server_error"
        assert set(error) == {"message", "type", "param", "code"}
        assert int(r.headers["retry-after"]) >= 1
        r = await h.http.get(f"/v1/tally/channels/0x{cid.hex()}", headers=headers)
        assert r.status_code == 503 and r.json()["error"]["code"] == "chain_unavailable"
        receipt = sign_receipt(other, h.chain.domain, Receipt(cid, 1, 1, b"\x01" * 32))
        r = await h.http.post("/v1/tally/receipts", content=json.dumps(receipt.to_json()))
        assert r.status_code == 503 and r.json()["error"]["code"] == "chain_unavailable"
        # The known channel's view still answers from its last state.
        assert (await _view(h))["status"] == "open"
