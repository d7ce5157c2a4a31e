"""The node's HTTP API over a FakeEngine and an in-memory chain."""

from __future__ import annotations

import pytest
from tallystick.protocol import SignedUsageRecord, recover_usage_record_signer

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
        assert record.completion_tokens == usage["completion_tokens"] == len(
            tally["completion_token_ids"]
        )
        assert usage["prompt_tokens"] == len(
            h.engine.counter.chat_prompt_ids([{"role": "user", "content": "Hi"}])
        )
        assert set(tally["timings"]) == {"ttft_ms", "itl_ms", "total_ms"}
