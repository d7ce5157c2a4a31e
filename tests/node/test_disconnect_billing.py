"""Disconnect billing with a fast engine (§6): a client that stops reading and then goes is
billed for exactly the chunks the transport accepted, never for a chunk still waiting in a
full buffer, and the node stops generating at once."""

from __future__ import annotations

import asyncio
import json

import pytest
from tallystick.node.engines import FakeEngine

from tests.kit.node_harness import MODEL

pytestmark = pytest.mark.anyio

REPLY = " ".join(f"word{i}" for i in range(400))  # far more tokens than the client reads


async def _stream_until_the_client_stops(h, read: int, *, blocks: bool) -> tuple[list, int]:
    """Drive the app like uvicorn: after ``read`` content chunks the client stops reading.

    ``blocks``: the next send waits (the transport's buffer is full) until the client goes,
    then returns without error, as uvicorn's does once the connection is lost. Otherwise
    every later send returns at once and the disconnect arrives right after the last read.
    Returns the content chunks the client received and the sends the node attempted.
    """
    body = json.dumps(
        {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "go"}]}
    ).encode()
    received: list[bytes] = []
    gone = asyncio.Event()
    attempts = 0
    sent_body = False

    async def receive():
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        nonlocal attempts
        if message["type"] != "http.response.body" or not message["body"]:
            return
        attempts += 1
        if gone.is_set():
            return  # uvicorn drops writes to a lost connection silently
        if len(received) == read + 1:  # the role chunk, then `read` content chunks
            gone.set()  # the client goes instead of reading further
            if blocks:
                await asyncio.sleep(0.05)  # drain() resumes only when the connection is lost
            return
        received.append(message["body"])

    await h.app(h.chat_scope(body), receive, send)
    return received[1:], attempts


def _text(chunks: list[bytes]) -> str:
    parsed = [json.loads(c.decode()[len("data: ") :]) for c in chunks]
    return "".join(p["choices"][0]["delta"].get("content", "") for p in parsed)


@pytest.mark.parametrize("blocks", [True, False], ids=["buffer_full", "fast_close"])
async def test_a_client_that_stops_reading_is_billed_only_for_accepted_chunks(make_node, blocks):
    engine = FakeEngine(reply=REPLY, token_delay=0.0)
    async with make_node(engine=engine, default_max_tokens=2000) as h:
        seen, attempts = await _stream_until_the_client_stops(h, 5, blocks=blocks)
        stored = h.ledger.last_record(h.channel_id)
        assert stored is not None
        billed = h.engine.counter.decode(stored.completion_ids)
        assert billed.startswith(_text(seen))
        assert len(seen) == 5, (len(stored.completion_ids), attempts)
        if blocks:
            # The chunk stuck in the full buffer never left the node: not billed.
            assert len(stored.completion_ids) == 5
        else:
            # Accepted by the transport just before the disconnect was seen: billed, and
            # nothing more is sent.
            assert len(stored.completion_ids) <= 6
        assert attempts <= 7  # no stream of sends into a dead connection
        assert engine.stats()["running"] == 0  # generation stopped
