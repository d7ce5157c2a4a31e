"""Hostile or broken requests: each is a 4xx OpenAI envelope naming the problem, never a 5xx."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from tallystick.node.engines import FakeEngine

from tests.kit.node_harness import MODEL

pytestmark = pytest.mark.anyio

MSG = [{"role": "user", "content": "x"}]


def envelope(resp: Any, status: int, code: str, param: str | None = None) -> str:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == code, err
    if param is not None:
        assert err["param"] == param, err
    assert "Traceback" not in err["message"]
    return str(err["message"])


async def post_raw(h: Any, body: bytes, path: str = "/v1/chat/completions") -> Any:
    headers = {**h.auth(), "content-type": "application/json"}
    return await h.http.post(path, content=body, headers=headers)


async def test_malformed_json_and_invalid_utf8(make_node):
    async with make_node() as h:
        msg = envelope(
            await post_raw(h, b'{"model": "fake-model", "messages": ['), 400, "invalid_json"
        )
        assert "line 1 column" in msg
        bad = b'{"model": "fake-model", "messages": [{"role": "user", "content": "\xff\xfe"}]}'
        assert "byte" in envelope(await post_raw(h, bad), 400, "invalid_encoding")
        envelope(await post_raw(h, b"[1, 2]"), 400, "invalid_json")
        envelope(await post_raw(h, b""), 400, "invalid_json")
        nan = b'{"model": "fake-model", "messages": [], "temperature": NaN}'
        assert "NaN" in envelope(await post_raw(h, nan), 400, "invalid_json")
        envelope(
            await post_raw(h, b'{"channelId": Infinity}', "/v1/tally/receipts"), 400, "invalid_json"
        )


async def test_deeply_nested_json(make_node):
    async with make_node(max_body_bytes=1024 * 1024) as h:
        deep = b'{"model": "fake-model", "messages": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
        assert "nested" in envelope(await post_raw(h, deep), 400, "invalid_json")
        parsed_but_wrong = json.dumps({"model": MODEL, "messages": [[[[[[[[[]]]]]]]]]}).encode()
        envelope(await post_raw(h, parsed_but_wrong), 400, "invalid_value", "messages")
        receipt_deep = b'{"channelId": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        envelope(await post_raw(h, receipt_deep, "/v1/tally/receipts"), 400, "invalid_json")


async def test_huge_bodies_are_refused_without_reading_them(make_node):
    async with make_node(max_body_bytes=64 * 1024) as h:
        declared = await h.http.post(
            "/v1/chat/completions",
            content=b"{" + b" " * (200 * 1024) + b"}",
            headers=h.auth(),
        )
        envelope(declared, 413, "request_too_large")
        pulled = 0

        async def endless() -> AsyncIterator[bytes]:
            # Chunked, no Content-Length: 1 GiB would follow if the node kept reading.
            nonlocal pulled
            for _ in range(16 * 1024):
                pulled += 1
                yield b" " * (64 * 1024)

        resp = await h.http.post("/v1/chat/completions", content=endless(), headers=h.auth())
        envelope(resp, 413, "request_too_large")
        assert pulled <= 3, f"the node read {pulled} chunks of 64 KiB past a 64 KiB limit"


async def test_prompts_longer_than_the_context_window(make_node):
    async with make_node(engine=FakeEngine(context_length=64)) as h:
        long = "word " * 200
        msg = envelope(await h.chat(long), 400, "context_length_exceeded", "messages")
        assert "64" in msg
        envelope(await h.chat(long, max_tokens=4), 400, "context_length_exceeded", "max_tokens")
        resp = await h.http.post(
            "/v1/completions", headers=h.auth(), json={"model": MODEL, "prompt": long}
        )
        envelope(resp, 400, "context_length_exceeded")
        assert h.ledger.last_record(h.channel_id) is None  # nothing billed


@pytest.mark.parametrize(
    ("extra", "param", "fragment"),
    [
        ({"messages": "hello"}, "messages", ""),
        ({"messages": []}, "messages", "at least 1"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages", "role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages", ""),
        ({"max_tokens": "5"}, "max_tokens", "integer"),
        ({"max_tokens": 2.5}, "max_tokens", "integer"),
        ({"max_tokens": -3}, "max_tokens", "greater than or equal to 1"),
        ({"max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ({"max_completion_tokens": -1}, "max_completion_tokens", ""),
        ({"temperature": 2.5}, "temperature", "less than or equal to 2"),
        ({"temperature": -0.1}, "temperature", "greater than or equal to 0"),
        ({"temperature": "hot"}, "temperature", ""),
        ({"top_p": 0}, "top_p", "greater than 0"),
        ({"top_p": 1.5}, "top_p", ""),
        ({"stream": "yes"}, "stream", ""),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
        ({"stop": [""]}, "stop", ""),
        ({"stop": 7}, "stop", ""),
        ({"seed": 2**64}, "seed", ""),
        ({"n": 0}, "n", ""),
        ({"model": 7}, "model", ""),
        ({"stream_options": {"include_usage": "x"}}, "stream_options", ""),
    ],
)
async def test_wrong_types_and_out_of_range_values(make_node, extra, param, fragment):
    async with make_node() as h:
        body = {"model": MODEL, "messages": MSG, **extra}
        resp = await h.http.post("/v1/chat/completions", json=body, headers=h.auth())
        message = envelope(resp, 400, "invalid_value", param)
        assert fragment in message


async def test_missing_fields_unknown_model_and_n(make_node):
    async with make_node() as h:
        resp = await h.http.post("/v1/chat/completions", json={"model": MODEL}, headers=h.auth())
        envelope(resp, 400, "missing_required_parameter", "messages")
        resp = await h.http.post("/v1/chat/completions", json={"messages": MSG}, headers=h.auth())
        envelope(resp, 400, "missing_required_parameter", "model")
        resp = await h.http.post(
            "/v1/chat/completions", json={"model": "gpt-9", "messages": MSG}, headers=h.auth()
        )
        assert "gpt-9" in envelope(resp, 404, "model_not_found", "model")
        resp = await h.http.get("/v1/tally/tokenizer/gpt-9")
        envelope(resp, 404, "model_not_found", "model")
        resp = await h.http.post(
            "/v1/completions", json={"model": MODEL, "prompt": ["a", "b"]}, headers=h.auth()
        )
        envelope(resp, 400, "invalid_value", "prompt")


async def test_bad_path_parameters_and_headers(make_node):
    async with make_node() as h:
        cid = "0x" + h.channel_id.hex()
        for seq in ("abc", "0", str(2**70)):
            resp = await h.http.get(f"/v1/tally/channels/{cid}/records/{seq}", headers=h.auth())
            envelope(resp, 400, "invalid_value", "seq")
        resp = await h.http.get(f"/v1/tally/channels/{cid}/records/99", headers=h.auth())
        envelope(resp, 404, "record_not_found", "seq")
        resp = await h.chat(receipt=None, **{})  # baseline works
        assert resp.status_code == 200
        headers = {**h.auth(), "X-Tally-Receipt": "{not json"}
        resp = await h.http.post(
            "/v1/chat/completions", json={"model": MODEL, "messages": MSG}, headers=headers
        )
        envelope(resp, 400, "invalid_receipt")
        headers = {**h.auth(), "X-Tally-Receipt": "[" * 20_000}
        resp = await h.http.post(
            "/v1/chat/completions", json={"model": MODEL, "messages": MSG}, headers=headers
        )
        assert "nested deeper" in envelope(resp, 400, "invalid_receipt")
        close = await h.http.post(f"/v1/tally/channels/{cid}/close", json=[1], headers=h.auth())
        assert "JSON object" in envelope(close, 400, "invalid_json")
        close = await h.http.post(
            f"/v1/tally/channels/{cid}/close", json={"channelId": 5}, headers=h.auth()
        )
        envelope(close, 400, "invalid_receipt", "channelId")
