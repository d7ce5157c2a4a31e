"""The node's HTTP API over a FakeEngine and an in-memory chain.

One module for every route's contract (over 450 lines): the tests share one harness
(tests/kit/node_harness) and read as the API's table of cases, route by route.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import pytest
from eth_account import Account
from tallystick.node.engines import FakeEngine
from tallystick.protocol import (
    ChannelStatus,
    SignedUsageRecord,
    UsageRecord,
    recover_usage_record_signer,
)

from tests.kit.ledger import STORES
from tests.kit.node_harness import MODEL, open_channel

pytestmark = pytest.mark.anyio


async def test_chat_completion_carries_usage_and_a_signed_record(make_node):
    async with make_node() as h:
        resp = await h.chat("Hi")
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["content"] == "Hello there, friend."
        usage = body["usage"]
        tally = body["tallystick"]
        signed = SignedUsageRecord.from_json(tally)
        assert recover_usage_record_signer(h.chain.domain, signed) == h.provider.address
        record = signed.record
        assert record.seq == 1
        assert record.prompt_tokens == usage["prompt_tokens"]
        assert (
            record.completion_tokens
            == usage["completion_tokens"]
            == len(tally["completion_token_ids"])
        )
        assert usage["prompt_tokens"] == len(
            h.engine.counter.chat_prompt_ids([{"role": "user", "content": "Hi"}])
        )
        assert set(tally["timings"]) == {"ttft_ms", "itl_ms", "total_ms"}


def _sse(text: str) -> list[str]:
    return [line[len("data: ") :] for line in text.split("\n\n") if line.startswith("data: ")]


async def test_stream_sends_deltas_then_the_record_on_the_finish_chunk_then_usage_then_done(
    make_node,
):
    async with make_node() as h:
        resp = await h.chat("Hi", stream=True, stream_options={"include_usage": True})
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = _sse(resp.text)
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        assert text == "Hello there, friend."
        finish = chunks[-2]
        assert finish["choices"][0]["finish_reason"] == "stop"
        assert finish["tallystick"]["record"]["seq"] == 1
        final = chunks[-1]  # asked for: OpenAI's usage-only chunk
        assert final["choices"] == [] and "tallystick" not in final
        assert final["usage"]["completion_tokens"] == len(
            finish["tallystick"]["completion_token_ids"]
        )


async def test_stream_without_include_usage_has_no_chunk_with_empty_choices(make_node):
    async with make_node() as h:
        resp = await h.chat("Hi", stream=True)
        events = _sse(resp.text)
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert all(len(c["choices"]) == 1 for c in chunks)  # c.choices[0] always works
        assert all("usage" not in c for c in chunks)
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
        assert chunks[-1]["tallystick"]["record"]["seq"] == 1


async def test_text_completion(make_node):
    async with make_node() as h:
        resp = await h.http.post(
            "/v1/completions",
            headers=h.auth(),
            json={"model": MODEL, "prompt": "Once", "max_tokens": 5},
        )
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["object"] == "text_completion"
        assert body["usage"]["completion_tokens"] == 5
        assert body["choices"][0]["finish_reason"] == "length"
        assert body["usage"]["prompt_tokens"] == len(h.engine.counter.text_prompt_ids("Once"))


@pytest.mark.parametrize("store", STORES)
async def test_credit_rule_requires_the_previous_receipt(make_node, store):
    async with make_node(store=store) as h:
        first = (await h.chat()).json()
        refused = await h.chat()
        assert refused.status_code == 402
        assert refused.json()["error"]["code"] == "receipt_required"
        assert "seq 1" in refused.json()["error"]["message"]
        ok = await h.chat(receipt=h.countersign(first))  # piggybacked receipt
        assert ok.status_code == 200, ok.text
        rec = ok.json()["tallystick"]["record"]
        assert rec["seq"] == 2
        assert (
            rec["prevRoot"]
            == "0x" + UsageRecord.from_json(first["tallystick"]["record"]).usage_root().hex()
        )


@pytest.mark.parametrize("store", STORES)
async def test_credit_requests_allows_several_unpaid(make_node, store):
    async with make_node(credit_requests=2, store=store) as h:
        assert (await h.chat()).status_code == 200
        assert (await h.chat()).status_code == 200
        assert (await h.chat()).json()["error"]["code"] == "receipt_required"


@pytest.mark.parametrize("store", STORES)
async def test_insufficient_deposit(make_node, store):
    async with make_node(store=store) as h:
        h.chain.channels[h.channel_id] = replace(h.chain.channels[h.channel_id], deposit=50)
        h.node.gate._cache.put(h.channel_id, h.chain.channels[h.channel_id])
        resp = await h.chat(max_tokens=100)
        assert resp.status_code == 402
        err = resp.json()["error"]
        assert err["code"] == "insufficient_deposit" and "top up" in err["message"]
        assert (await h.chat(max_tokens=10)).status_code == 200


@pytest.mark.parametrize("store", STORES)
async def test_top_up_is_seen_without_waiting_for_the_cache(make_node, store):
    async with make_node(store=store) as h:
        h.chain.channels[h.channel_id] = replace(h.chain.channels[h.channel_id], deposit=50)
        h.node.gate._cache.put(h.channel_id, h.chain.channels[h.channel_id])
        h.chain.channels[h.channel_id] = replace(h.chain.channels[h.channel_id], deposit=10_000)
        assert (await h.chat(max_tokens=100)).status_code == 200


@pytest.mark.parametrize(
    ("status", "code"),
    [(ChannelStatus.CLOSING, "channel_closing"), (ChannelStatus.CLOSED, "channel_closed")],
)
async def test_closing_or_closed_channel_is_refused(make_node, status, code):
    async with make_node(channel_cache_ttl=0) as h:
        h.chain.channels[h.channel_id] = replace(h.chain.channels[h.channel_id], status=status)
        resp = await h.chat()
        assert resp.status_code == 402
        assert resp.json()["error"]["code"] == code


async def test_auth_errors(make_node):
    async with make_node() as h:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
        raw = json.dumps(body).encode()
        path = "/v1/chat/completions"
        cases = [
            ({}, "missing_api_key"),
            ({"Authorization": "Bearer tsk1.nope"}, "invalid_api_key"),
            (h.sign("POST", path, raw, ttl=-5), "expired_request"),
            (h.sign("POST", path, raw, ttl=3600), "expired_request"),  # longer than 600 s
            (h.sign("POST", path, raw + b" "), "request_mismatch"),  # another body
            (h.sign("POST", "/v1/completions", raw), "request_mismatch"),  # another route
            (h.sign("POST", path, raw, Account.from_key("0x" + "33" * 32)), "invalid_signer"),
            (h.sign("POST", path, raw, channel_id=b"\x01" * 32), "channel_not_found"),
        ]
        for headers, code in cases:
            resp = await h.http.post(path, content=raw, headers=headers)
            assert resp.status_code == 401, (code, resp.text)
            assert resp.json()["error"]["code"] == code
            assert resp.json()["error"]["type"] == "authentication_error"
        assert h.ledger.last_record(h.channel_id) is None  # none of them took a seq


async def test_a_request_signature_is_taken_once_and_only_for_the_next_seq(make_node):
    async with make_node(credit_requests=3) as h:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
        raw = json.dumps(body).encode()
        path = "/v1/chat/completions"
        headers = h.sign("POST", path, raw)
        assert (await h.http.post(path, content=raw, headers=headers)).status_code == 200
        again = await h.http.post(path, content=raw, headers=headers)
        assert (again.status_code, again.json()["error"]["code"]) == (401, "replayed_request")
        for seq, root in ((1, None), (3, None), (2, b"\x05" * 32)):
            stale = await h.http.post(
                path, content=raw, headers=h.sign("POST", path, raw, seq=seq, root=root)
            )
            assert (stale.status_code, stale.json()["error"]["code"]) == (409, "stale_request")
            assert "next request is seq 2" in stale.json()["error"]["message"]
        assert h.ledger.last_record(h.channel_id).seq == 1  # the refused ones took no seq
        ok = await h.http.post(path, content=raw, headers=h.sign("POST", path, raw))
        assert ok.json()["tallystick"]["record"]["seq"] == 2


async def test_channel_of_another_provider_is_refused(make_node):
    async with make_node() as h:
        other = open_channel(
            h.chain, h.client, nonce=7, provider="0x000000000000000000000000000000000000dEaD"
        )
        resp = await h.http.post(
            "/v1/chat/completions",
            headers=h.auth(channel_id=other),
            json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
        )
        assert resp.status_code == 401
        assert resp.json()["error"]["code"] == "wrong_provider"


async def test_channel_for_another_model_is_refused(make_node):
    async with make_node() as h:
        other = open_channel(h.chain, h.client, nonce=8, model="other-model")
        resp = await h.http.post(
            "/v1/chat/completions",
            headers=h.auth(channel_id=other),
            json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
        )
        assert resp.status_code == 400
        assert resp.json()["error"]["code"] == "model_mismatch"


async def test_session_key_signs_tokens_and_receipts(make_node):
    async with make_node() as h:
        session = Account.from_key("0x" + "44" * 32)
        h.chain.channels[h.channel_id] = replace(
            h.chain.channels[h.channel_id], session_key=session.address
        )
        body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
        resp = await h.http.post("/v1/chat/completions", json=body, headers=h.auth(account=session))
        assert resp.status_code == 200, resp.text
        posted = await h.http.post("/v1/tally/receipts", json=h.countersign(resp.json(), session))
        assert posted.status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b'{"model": "fake-model", "messages": "\xff\xfe"}', 400, "invalid_encoding"),
        (b'{"model": "fake-model"}', 400, "missing_required_parameter"),
        (
            b'{"model": "fake-model", "messages": [{"role": "user", "content": 5}]}',
            400,
            "invalid_value",
        ),
        (
            b'{"model": "fake-model", "messages": [{"role":"user","content":"x"}], "n": 2}',
            400,
            "unsupported_value",
        ),
        (
            b'{"model": "fake-model", "messages": [{"role":"user","content":"x"}],'
            b' "max_tokens": 5000}',
            400,
            "context_length_exceeded",
        ),
        (b'{"model": "nope", "messages": [{"role":"user","content":"x"}]}', 404, "model_not_found"),
        (
            b'{"model": "fake-model", "messages": [{"role":"user","content":"x"}],'
            b' "stop": ["a","b","c","d","e"]}',
            400,
            "invalid_value",
        ),
    ],
)
async def test_bad_requests_get_the_openai_envelope(make_node, body, status, code):
    async with make_node() as h:
        resp = await h.http.post(
            "/v1/chat/completions",
            content=body,
            headers={**h.auth(), "content-type": "application/json"},
        )
        assert resp.status_code == status, resp.text
        err = resp.json()["error"]
        assert err["code"] == code
        assert set(err) == {"message", "type", "param", "code"}


async def test_unknown_fields_are_refused_and_content_parts_are_joined(make_node):
    async with make_node() as h:
        parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
        body = {"model": MODEL, "messages": [{"role": "user", "content": parts}]}
        resp = await h.http.post(
            "/v1/chat/completions", headers=h.auth(), json={**body, "frobnicate": 1}
        )
        assert resp.status_code == 400
        assert resp.json()["error"]["code"] == "unsupported_parameter"
        assert resp.json()["error"]["param"] == "frobnicate"
        # the values OpenAI clients send for "not used" are accepted
        neutral = {"tools": [], "presence_penalty": 0, "logit_bias": {}, "response_format": None}
        resp = await h.http.post(
            "/v1/chat/completions",
            headers=h.auth(),
            json={**body, **neutral, "max_completion_tokens": 3},
        )
        assert resp.status_code == 200, resp.text
        expected = h.engine.counter.chat_prompt_ids([{"role": "user", "content": "a\nb"}])
        assert resp.json()["usage"]["prompt_tokens"] == len(expected)
        assert resp.json()["usage"]["completion_tokens"] == 3


async def test_404_405_413_and_no_stack_traces(make_node):
    async with make_node(max_body_bytes=2048) as h:
        r = await h.http.get("/v1/nothing")
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_route"
        r = await h.http.get("/v1/chat/completions")
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
        r = await h.http.post("/v1/chat/completions", content=b"x" * 5000, headers=h.auth())
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


async def test_engine_crash_is_a_500_envelope_and_nothing_is_billed(make_node):
    async with make_node(engine=FakeEngine(fail_after=2)) as h:
        r = await h.chat()
        assert r.status_code == 500
        assert r.json()["error"]["code"] == "engine_error"
        assert h.ledger.last_record(h.channel_id) is None
        assert (await h.chat()).status_code == 500  # the reservation was released


async def test_engine_queue_full_is_503(make_node):
    async with make_node(engine=FakeEngine(max_queue=1, max_batch=1, token_delay=0.05)) as h:
        import asyncio

        other = open_channel(h.chain, Account.from_key("0x" + "55" * 32), nonce=3)
        third = open_channel(h.chain, Account.from_key("0x" + "66" * 32), nonce=4)
        body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 4}
        clients = [h.client, Account.from_key("0x" + "55" * 32), Account.from_key("0x" + "66" * 32)]
        reqs = [
            h.http.post("/v1/chat/completions", json=body, headers=h.auth(a, c))
            for a, c in zip(clients, [h.channel_id, other, third], strict=True)
        ]
        codes = sorted(r.status_code for r in await asyncio.gather(*reqs))
        assert 503 in codes and 200 in codes


@pytest.mark.parametrize("store", STORES)
async def test_receipts_are_checked_against_issued_records(make_node, store):
    async with make_node(credit_requests=3, store=store) as h:
        first = (await h.chat()).json()
        second = (await h.chat()).json()
        # lower totals than a record we issued: no match
        forged = h.countersign(first)
        forged["inputTokens"] -= 1
        forged = _resign(h, forged)
        r = await h.http.post("/v1/tally/receipts", json=forged)
        assert r.status_code == 400 and r.json()["error"]["code"] == "receipt_mismatch"
        # signed by a stranger
        r = await h.http.post(
            "/v1/tally/receipts", json=h.countersign(first, Account.from_key("0x" + "77" * 32))
        )
        assert r.status_code == 400 and r.json()["error"]["code"] == "receipt_signer_mismatch"
        r = await h.http.post("/v1/tally/receipts", json={"channelId": "0x12"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_receipt"
        # the newer receipt, then the older one is refused, the same one again is fine
        assert (
            await h.http.post("/v1/tally/receipts", json=h.countersign(second))
        ).status_code == 200
        r = await h.http.post("/v1/tally/receipts", json=h.countersign(first))
        assert r.status_code == 409 and r.json()["error"]["code"] == "receipt_stale"
        assert (
            await h.http.post("/v1/tally/receipts", json=h.countersign(second))
        ).status_code == 200
        assert h.ledger.last_receipt(h.channel_id).seq == 2


def _resign(h, wire):
    from tallystick.protocol import Receipt, sign_receipt

    receipt = Receipt(
        bytes.fromhex(wire["channelId"][2:]),
        wire["inputTokens"],
        wire["outputTokens"],
        bytes.fromhex(wire["usageRoot"][2:]),
    )
    return sign_receipt(h.client, h.chain.domain, receipt).to_json()


@pytest.mark.parametrize("store", STORES)
async def test_channel_view_records_and_cooperative_close(make_node, store):
    async with make_node(store=store) as h:
        body = await h.paid_chat()
        cid = "0x" + h.channel_id.hex()
        view = (await h.http.get(f"/v1/tally/channels/{cid}", headers=h.auth())).json()
        rec = body["tallystick"]["record"]
        assert view["served"]["inputTokens"] == rec["inputTokens"]
        assert view["countersigned"]["seq"] == 1 and view["unpaid"] == 0
        cost = rec["inputTokens"] * 1 + rec["outputTokens"] * 2
        assert view["served"]["cost"] == cost and view["creditLeft"] == 100_000 - cost
        got = (await h.http.get(f"/v1/tally/channels/{cid}/records/1", headers=h.auth())).json()
        assert (
            got["record"] == rec
            and got["completion_token_ids"] == body["tallystick"]["completion_token_ids"]
        )
        r = await h.http.get(f"/v1/tally/channels/{cid}/records/9", headers=h.auth())
        assert r.status_code == 404
        close = await h.http.post(
            f"/v1/tally/channels/{cid}/close", headers=h.auth(), json=h.countersign(body)
        )
        assert close.status_code == 200, close.text
        from tallystick.protocol import Receipt, SignedReceipt, recover_receipt_signer

        receipt = Receipt.from_json(close.json()["receipt"])
        sig = bytes.fromhex(close.json()["providerSignature"][2:])
        assert (
            recover_receipt_signer(h.chain.domain, SignedReceipt(receipt, sig))
            == h.provider.address
        )
        after = await h.chat(receipt=h.countersign(body))
        assert after.status_code == 402 and after.json()["error"]["code"] == "channel_closing"


@pytest.mark.parametrize("store", STORES)
async def test_close_refuses_a_receipt_that_is_not_the_last(make_node, store):
    async with make_node(credit_requests=2, store=store) as h:
        first = (await h.chat()).json()
        await h.chat()
        cid = "0x" + h.channel_id.hex()
        r = await h.http.post(
            f"/v1/tally/channels/{cid}/close", headers=h.auth(), json=h.countersign(first)
        )
        assert r.status_code == 409 and r.json()["error"]["code"] == "receipt_not_final"


async def test_models_and_tokenizer_bundle(make_node):
    async with make_node() as h:
        models = (await h.http.get("/v1/models")).json()
        entry = models["data"][0]
        assert models["object"] == "list" and entry["id"] == MODEL
        assert entry["pricing"] == {
            "input_per_million": 1_000_000,
            "output_per_million": 2_000_000,
            "token": "0x0000000000000000000000000000000000000000",
        }
        assert entry["context_length"] == 2048
        raw = (await h.http.get(f"/v1/tally/tokenizer/{MODEL}")).content
        from eth_utils import keccak

        assert "0x" + keccak(raw).hex() == entry["tokenizer_hash"]
        assert (await h.http.get("/v1/tally/tokenizer/nope")).status_code == 404


async def test_rate_limits_answer_429_with_headers(make_node):
    async with make_node(rpm_limit=2, credit_requests=10) as h:
        ok = await h.chat(max_tokens=2)
        assert ok.headers["x-ratelimit-limit-requests"] == "2"
        assert ok.headers["x-ratelimit-remaining-requests"] == "1"
        await h.chat(max_tokens=2)
        r = await h.chat(max_tokens=2)
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
        assert int(r.headers["retry-after"]) >= 1
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
        assert r.headers["x-ratelimit-reset-requests"].endswith("s")


async def test_tokens_per_minute_limit(make_node):
    async with make_node(tpm_limit=100, credit_requests=10) as h:
        r = await h.chat(max_tokens=500)
        assert r.status_code == 429 and "lower max_tokens" in r.json()["error"]["message"]
        assert (await h.chat(max_tokens=40)).status_code == 200
        r = await h.chat(max_tokens=60)
        assert r.status_code == 429 and r.headers["x-ratelimit-limit-tokens"] == "100"


async def test_metrics_exposition(make_node):
    async with make_node() as h:
        await h.paid_chat()
        await h.http.get("/no/such/route")
        text = (await h.http.get("/metrics")).text
        assert 'vllm:time_to_first_token_seconds_count{model_name="fake-model"} 1.0' in text
        assert 'vllm:generation_tokens_total{model_name="fake-model"}' in text
        assert 'tallystick_requests_total{route="/v1/chat/completions",status="200"} 1.0' in text
        assert 'vllm:num_requests_waiting{model_name="fake-model"} 0.0' in text
        assert 'tallystick_channels{status="open"} 1.0' in text
        assert "tallystick_earnings_unclaimed" in text
        assert 'tallystick_revenue_total{model_name="fake-model",token=' in text
        assert "_created" not in text and "unmatched" not in text and "/no/such" not in text
        health = (await h.http.get("/health")).json()
        assert health["status"] == "ok" and health["provider"] == h.provider.address


async def test_a_client_that_disconnects_mid_stream_pays_only_what_it_received(make_node):
    """Drive the ASGI app directly: the client vanishes after the third content chunk."""
    async with make_node(engine=FakeEngine(reply="one two three four five six seven")) as h:
        body = json.dumps(
            {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "count"}]}
        ).encode()
        scope = h.chat_scope(body)
        received: list[bytes] = []
        gone = asyncio.Event()
        sent_body = False

        async def receive():
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            if message["type"] == "http.response.body" and message["body"]:
                received.append(message["body"])
                if len(received) == 4:  # role chunk + 3 content chunks
                    gone.set()
                    await asyncio.sleep(0)

        await h.app(scope, receive, send)
        chunks = [json.loads(c.decode()[len("data: ") :]) for c in received]
        delivered = [c["choices"][0]["delta"].get("content", "") for c in chunks[1:]]
        stored = h.ledger.last_record(h.channel_id)
        assert stored is not None and stored.seq == 1
        text = h.engine.counter.decode(stored.completion_ids)
        assert text == "".join(delivered)
        assert stored.signed.record.completion_tokens == len(stored.completion_ids) <= 3
        assert stored.signed.record.prompt_tokens == len(
            h.engine.counter.chat_prompt_ids([{"role": "user", "content": "count"}])
        )
        got = await h.http.get(
            f"/v1/tally/channels/0x{h.channel_id.hex()}/records/1", headers=h.auth()
        )
        assert got.json()["completion_token_ids"] == stored.completion_ids


class _UpstreamDown(FakeEngine):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self._error = error

    def generate(self, prompt, params):
        raise self._error


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        ("unavailable", 503, "upstream_unavailable"),
        ("error", 502, "upstream_error"),
    ],
)
async def test_upstream_failures_are_502_or_503_and_bill_nothing(make_node, error, status, code):
    from tallystick.node.engines import UpstreamError, UpstreamUnavailable

    exc = (
        UpstreamUnavailable("connection refused")
        if error == "unavailable"
        else UpstreamError("bad gateway", 500)
    )
    async with make_node(engine=_UpstreamDown(exc)) as h:
        r = await h.chat()
        assert r.status_code == status and r.json()["error"]["code"] == code
        assert h.ledger.last_record(h.channel_id) is None
        assert (await h.chat()).status_code == status  # the reservation was released


async def test_a_record_being_served_is_pending_and_one_never_served_is_not_found(make_node):
    import asyncio

    async with make_node(engine=FakeEngine(reply="Hello there, friend.", token_delay=0.02)) as h:
        cid = "0x" + h.channel_id.hex()
        serving = asyncio.create_task(h.chat())
        for _ in range(200):
            view = (await h.http.get(f"/v1/tally/channels/{cid}", headers=h.auth())).json()
            if view["inFlight"]:
                break
            await asyncio.sleep(0.005)
        pending = await h.http.get(f"/v1/tally/channels/{cid}/records/1", headers=h.auth())
        assert pending.status_code == 404 and pending.json()["error"]["code"] == "record_pending"
        assert pending.headers["retry-after"] == "1"
        assert (await serving).status_code == 200
        got = await h.http.get(f"/v1/tally/channels/{cid}/records/1", headers=h.auth())
        assert got.status_code == 200
        # Nothing in flight could become seq 2: final (a client drops such a request, §6).
        never = await h.http.get(f"/v1/tally/channels/{cid}/records/2", headers=h.auth())
        assert never.status_code == 404 and never.json()["error"]["code"] == "record_not_found"


async def test_generated_tokens_are_counted_while_they_stream(make_node):
    """``vllm:generation_tokens_total`` moves during a long generation, not at its end."""
    import re

    series = r'vllm:generation_tokens_total\{model_name="fake-model"\} (\S+)'
    engine = FakeEngine(reply=" ".join(["word"] * 40), token_delay=0.03)
    async with make_node(engine=engine) as h:
        request = asyncio.create_task(h.chat(max_tokens=60, stream=True))
        seen: list[float] = []
        while not request.done():
            text = (await h.http.get("/metrics")).text
            found = re.search(series, text)
            if found:
                seen.append(float(found[1]))
            await asyncio.sleep(0.05)
        assert (await request).status_code == 200
        final = (await h.http.get("/metrics")).text
        total = float(re.search(series, final)[1])
        assert total >= 40
        assert any(0 < v < total for v in seen), (seen, total)
