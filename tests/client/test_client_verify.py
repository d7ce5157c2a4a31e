"""The client pays only verified bills: honest ones are countersigned, every cheat is caught."""

from __future__ import annotations

import os
from dataclasses import replace

import httpx
import pytest
from eth_account import Account
from tallystick.client import BillingDispute, NodeUnavailable, PaymentRequired, Tallystick
from tallystick.protocol import (
    SignedUsageRecord,
    cost_of,
    recover_receipt_signer,
)

from tests.kit.client import (
    MESSAGES,
    MODEL,
    PRICES,
    Bill,
    FakeNode,
    assert_nothing_countersigned,
    fake_chat,
)


def test_honest_bill_is_countersigned_stored_and_posted(client: Tallystick, fake: FakeNode) -> None:
    reply = fake_chat(client)
    assert reply.choices[0].message.content == "hello world"
    bill = reply.tally
    prompt = len(fake.counter.chat_prompt_ids(MESSAGES))
    completion = len(fake.counter.text_prompt_ids("hello world")) + 1  # + EOS
    assert (bill.prompt_tokens, bill.completion_tokens) == (prompt, completion)
    assert bill.cost == cost_of(prompt, completion, PRICES) == 2 * prompt + 8 * completion
    tally = client.store.tally(fake.channel_id)
    assert (tally.seq, tally.input_tokens, tally.output_tokens) == (1, prompt, completion)
    assert tally.usage_root == bill.record.record.usage_root()
    assert tally.delivered
    # The node received exactly the stored receipt, signed by the client.
    assert fake.receipts == [tally.receipt]
    assert recover_receipt_signer(fake.domain, tally.receipt) == client.wallet.address


def test_second_request_chains_on_the_first(client: Tallystick, fake: FakeNode) -> None:
    first = fake_chat(client).tally
    second = fake_chat(client).tally
    r1, r2 = first.record.record, second.record.record
    assert r2.seq == 2 and r2.prev_root == r1.usage_root()
    assert second.total_cost == cost_of(r2.input_tokens, r2.output_tokens, PRICES)
    assert first.cost + second.cost == second.total_cost
    assert [line.seq for line in client.bill(fake.channel_id)] == [1, 2]


def _inflate_completion(bill: Bill) -> None:
    bill.record = replace(
        bill.record,
        completion_tokens=bill.record.completion_tokens + 1,
        output_tokens=bill.record.output_tokens + 1,
    )


def _inflate_ids(bill: Bill) -> None:
    # An extra id the text does not show: counts and hash stay consistent with the ids.
    from tallystick.protocol import hash_token_ids

    bill.completion_ids = [*bill.completion_ids[:-1], 300, bill.completion_ids[-1]]
    n = len(bill.completion_ids)
    bill.record = replace(
        bill.record,
        completion_tokens=n,
        completion_hash=hash_token_ids(bill.completion_ids),
        output_tokens=bill.record.output_tokens + 1,
    )


def _change_prompt(bill: Bill) -> None:
    bill.record = replace(
        bill.record,
        prompt_tokens=bill.record.prompt_tokens + 2,
        input_tokens=bill.record.input_tokens + 2,
    )


def _change_text(bill: Bill) -> None:
    bill.text = "hello word"  # the ids still say "hello world"


def _break_root(bill: Bill) -> None:
    bill.record = replace(bill.record, prev_root=os.urandom(32))


def _other_key(bill: Bill) -> None:
    bill.signer = Account.create()


def _edit_after_signing(bill: Bill) -> None:
    def edit(signed: SignedUsageRecord) -> SignedUsageRecord:
        r = signed.record
        return SignedUsageRecord(replace(r, output_tokens=r.output_tokens + 5), signed.signature)

    bill.after_sign = edit


CHEATS = {
    "completion count +1": (_inflate_completion, "completionTokens"),
    "extra id": (_inflate_ids, "completionText"),
    "prompt count": (_change_prompt, "promptTokens"),
    "text changed after signing": (_change_text, "completionText"),
    "root chain broken": (_break_root, "prevRoot"),
    "signed by another key": (_other_key, "signer"),
    "record edited after signing": (_edit_after_signing, "signer"),
}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("cheat", list(CHEATS))
def test_cheating_provider_is_caught(
    client: Tallystick, fake: FakeNode, cheat: str, stream: bool
) -> None:
    tamper, field = CHEATS[cheat]
    fake.tamper = tamper
    with pytest.raises(BillingDispute) as caught:
        out = fake_chat(client, stream=stream)
        for _ in out if stream else ():
            pass
    dispute = caught.value
    assert field in [m.field for m in dispute.mismatches]
    assert_nothing_countersigned(client, fake)
    (stored,) = client.store.disputes(fake.channel_id)
    assert stored.id == dispute.dispute_id
    assert field in [m["field"] for m in stored.mismatches]
    assert stored.evidence["request"]["messages"] == MESSAGES
    assert "record" in stored.evidence["tallystick"]
    assert "response" in stored.evidence


def test_after_a_dispute_the_channel_stays_at_the_last_verified_receipt(
    client: Tallystick, fake: FakeNode
) -> None:
    fake_chat(client)
    before = client.store.tally(fake.channel_id)
    fake.tamper = _inflate_completion
    with pytest.raises(BillingDispute):
        fake_chat(client)
    assert client.store.tally(fake.channel_id) == before
    assert len(fake.receipts) == 1


def test_streaming_bill_is_verified_before_done(client: Tallystick, fake: FakeNode) -> None:
    stream = fake_chat(client, stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "hello world"
    assert stream.tally is not None and stream.tally.record.record.seq == 1
    assert chunks[-1].tally is stream.tally  # the final chunk carries the verified bill
    assert fake.receipts == [client.store.tally(fake.channel_id).receipt]


def test_text_completion_is_verified(client: Tallystick, fake: FakeNode) -> None:
    out = client.completions.create(model=MODEL, prompt="the quick brown fox", max_tokens=8)
    assert out.choices[0].text == "hello world"
    assert out.tally.prompt_tokens == len(fake.counter.text_prompt_ids("the quick brown fox"))


def test_stop_string_bill(client: Tallystick, fake: FakeNode) -> None:
    def stop_at_world(bill: Bill) -> None:
        from tallystick.protocol import hash_token_ids

        ids = fake.counter.text_prompt_ids("hello world")  # generated through the stop string
        bill.completion_ids, bill.text = ids, "hello"
        bill.record = replace(
            bill.record,
            completion_tokens=len(ids),
            completion_hash=hash_token_ids(ids),
            output_tokens=len(ids),
        )

    fake.tamper = stop_at_world
    reply = fake_chat(client, stop=[" world"])
    assert reply.choices[0].message.content == "hello"
    assert reply.tally.completion_tokens == 2


def test_official_openai_sdk_through_the_tally_transport(
    client: Tallystick, fake: FakeNode
) -> None:
    sdk = client.openai(fake.channel_id)
    reply = sdk.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16)
    assert reply.choices[0].message.content == "hello world"
    text = ""
    for chunk in sdk.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=16, stream=True
    ):
        text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
    assert text == "hello world"
    assert client.store.tally(fake.channel_id).seq == 2
    assert len(fake.receipts) == 2
    fake.tamper = _inflate_completion
    with pytest.raises(BillingDispute):
        sdk.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16)
    assert client.store.tally(fake.channel_id).seq == 2


def test_piggybacked_receipt_when_not_posted(
    wallet: object, fake: FakeNode, tmp_path: object
) -> None:
    with Tallystick(
        wallet,  # type: ignore[arg-type]
        tmp_path / "s.db",  # type: ignore[operator]
        transport=fake.transport,
        post_receipts=False,
    ) as c:
        c.store.add_channel(fake.channel_info())
        fake_chat(c)
        assert fake.receipts == [] and not c.store.tally(fake.channel_id).delivered
        fake_chat(c)
        first = c.store.bill(fake.channel_id)[0].record.record
        assert fake.piggybacked[0].receipt.input_tokens == first.input_tokens
        assert fake.piggybacked[0].receipt.output_tokens == first.output_tokens


def test_402_becomes_payment_required(client: Tallystick, fake: FakeNode) -> None:
    envelope = {
        "error": {
            "message": "deposit too low: top up the channel",
            "type": "payment_required",
            "code": "insufficient_deposit",
            "param": None,
        }
    }
    fake.status_override = (402, envelope)
    with pytest.raises(PaymentRequired) as caught:
        fake_chat(client)
    assert caught.value.status == 402 and caught.value.code == "insufficient_deposit"
    assert "top up" in caught.value.message
    assert client.store.pending(fake.channel_id) is None  # refused: nothing to settle later


def test_unreachable_node_leaves_nothing_pending(client: Tallystick, fake: FakeNode) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client.http_client(client.channel(fake.channel_id)).close()
    client._clients.clear()
    client._transport = httpx.MockTransport(refuse)
    with pytest.raises(NodeUnavailable):
        fake_chat(client)
    assert client.store.pending(fake.channel_id) is None
