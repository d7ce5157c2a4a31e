"""Interrupted answers (docs/protocol.md §6): a stream that ends without its record is settled
from the node's signed record, billing at most ``max_unseen_tokens`` past what was received."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from tallystick.client import BillingDispute, Chain, Served, Tallystick, Wallet, verify_bill
from tallystick.client._types import ChannelTally
from tallystick.protocol import (
    ZERO_ROOT,
    Prices,
    cost_of,
)

from tests.kit.client import FakeNode, new_provider

PRICES = Prices(input_per_m=3_000_000_000, output_per_m=9_000_000_000)
MESSAGES = [{"role": "user", "content": "Tell me a story."}]
REPLY = "Once upon a time there was a tally stick that kept every count honest. " * 3


# --- the rule, on signed records (no node) ---


@pytest.fixture
def rule() -> Any:
    wallet = Wallet.from_key("0x" + os.urandom(32).hex())
    fake = FakeNode(new_provider(), wallet.address, os.urandom(32))
    prompt = fake.counter.chat_prompt_ids(MESSAGES)
    ids = fake.counter.text_prompt_ids("abcdefghij")  # one id per byte (tiny tokenizer)
    empty = ChannelTally(0, 0, 0, ZERO_ROOT, None, True)

    def check(received: str, billed: list[int], max_unseen: int, prompt_ids: Any = None) -> Any:
        served = Served(prompt_ids or prompt, received, None, (), 64)
        signed = fake.first_record(prompt, billed)
        return verify_bill(
            fake.channel_info(), empty, signed, billed, served, fake.counter, max_unseen=max_unseen
        )

    return check, ids, prompt


def test_interrupted_record_within_the_allowance_is_accepted(rule: Any) -> None:
    check, ids, _ = rule
    assert check("abcdefg", ids, 3).completion_tokens == 10  # 3 ids in flight
    assert check("abcdefghij", ids, 0).completion_tokens == 10
    assert check("", ids[:2], 2).completion_tokens == 2


def test_interrupted_record_billing_more_unseen_ids_is_disputed(rule: Any) -> None:
    check, ids, _ = rule
    with pytest.raises(BillingDispute) as caught:
        check("abcdef", ids, 3)  # 4 ids past the received text
    assert [m.field for m in caught.value.mismatches] == ["unseenTokens"]


def test_interrupted_record_with_other_text_or_prompt_is_disputed(rule: Any) -> None:
    check, ids, prompt = rule
    with pytest.raises(BillingDispute) as caught:
        check("abX", ids, 16)
    assert [m.field for m in caught.value.mismatches] == ["completionText"]
    with pytest.raises(BillingDispute) as caught:
        check("abc", ids, 16, prompt_ids=prompt[:-1])
    assert {m.field for m in caught.value.mismatches} == {"promptTokens", "promptHash"}


# --- against the real node (FakeEngine at 50 ms a token, real uvicorn, anvil) ---


@pytest.fixture
def slow_node(node_server: Any) -> str:
    from tallystick.node.engines import FakeEngine

    engine = FakeEngine(model_name="fake-model", reply=REPLY, token_delay=0.05)
    return str(node_server(engine, PRICES))


def _client(deployment: Any, accounts: Any, w3: Any, store: Path) -> Tallystick:
    chain = Chain(w3, deployment.registry.address, deployment.escrow.address)
    return Tallystick(Wallet(accounts.client), store, chain=chain)


def _read_some(client: Tallystick, chunks: int) -> str:
    stream = client.chat.completions.create(
        model="fake-model", messages=MESSAGES, max_tokens=200, stream=True
    )
    received = []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            received.append(chunk.choices[0].delta.content)
            if len(received) == chunks:
                break
    stream.close()  # stop reading: the connection goes, the node stops generating
    assert stream.tally is None
    return "".join(received)


def _check_interrupted_bill(client: Tallystick, endpoint: str, seq: int, received: str) -> None:
    info = client.channels.list()[0]
    line = client.bill(info)[seq - 1]
    raw = client.node(endpoint).record(info.channel_id, seq, client.biller.authorizer(info))
    ids = raw["completion_token_ids"]
    counter = client.biller.counter(info)
    assert line.record.record.completion_tokens == len(ids)
    assert counter.decode(ids).startswith(received)
    seen = next(k for k in range(len(ids) + 1) if counter.decode(ids[:k]).startswith(received))
    # Billed: what was received plus what was in flight (a 50 ms token leaves little room).
    assert len(ids) - seen <= 3
    assert len(ids) < len(REPLY) // 2  # the node stopped generating when the client left
    previous = client.bill(info)[seq - 2].record.record if seq > 1 else None
    before = cost_of(previous.input_tokens, previous.output_tokens, PRICES) if previous else 0
    r = line.record.record
    assert line.cost == cost_of(r.input_tokens, r.output_tokens, PRICES) - before


@pytest.mark.chain
def test_stop_reading_a_stream_then_the_next_request_settles_it(
    slow_node: str, deployment: Any, accounts: Any, w3: Any, tmp_path: Path
) -> None:
    with _client(deployment, accounts, w3, tmp_path / "c.db") as client:
        info = client.channels.open("fake-model", 10**15)
        received = _read_some(client, 5)
        assert client.store.pending(info.channel_id) is not None
        reply = client.chat.completions.create(model="fake-model", messages=MESSAGES, max_tokens=4)
        assert reply.tally.record.record.seq == 2  # seq 1 was settled first
        assert client.store.pending(info.channel_id) is None
        _check_interrupted_bill(client, slow_node, 1, received)
        tally = client.store.tally(info.channel_id)
        closed = client.channels.close(info.channel_id)
        assert closed.paid == cost_of(tally.input_tokens, tally.output_tokens, PRICES)


@pytest.mark.chain
def test_pending_interrupted_request_is_settled_after_a_restart(
    slow_node: str, deployment: Any, accounts: Any, w3: Any, tmp_path: Path
) -> None:
    store = tmp_path / "c.db"
    with _client(deployment, accounts, w3, store) as first:
        first.channels.open("fake-model", 10**15)
        first.chat.completions.create(model="fake-model", messages=MESSAGES, max_tokens=2)
        received = _read_some(first, 3)
    with _client(deployment, accounts, w3, store) as second:
        reply = second.chat.completions.create(model="fake-model", messages=MESSAGES, max_tokens=2)
        assert reply.tally.record.record.seq == 3
        _check_interrupted_bill(second, slow_node, 2, received)
        info = second.channels.list()[0]
        view = second.node(slow_node).channel(info.channel_id, second.biller.authorizer(info))
        assert view["countersigned"]["seq"] == 3 and view["unpaid"] == 0
