"""Bills a node cannot pad (issue 11 A), against a real node process on anvil.

The node is ``tallystick-node serve`` with its own functions wrapped to cheat
(``_cheating_node.py``): it signs, with the provider's key, bills carrying ids the client never
received as text, bills above the deposit, and streams it ends itself. Each cheat ends in a
``BillingDispute`` with evidence, nothing countersigned and nothing paid on-chain; the channel
is then refused by the SDK (``ChannelDisputed``) with the way out in the message.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tallystick.client import BillingDispute, ChannelDisputed
from tallystick.protocol import ProtocolError, cost_of

from tests.kit.chain import MODEL, PRICES
from tests.kit.node import MESSAGES, signed_get, signed_post

pytestmark = pytest.mark.chain

DEPOSIT = 10**15
SHORT = "Paris is the capital of France."  # a few ids: within the old max_unseen_tokens of 16


def _cheat(start_node: Any, tmp_path: Path, cheat: str, **env: str) -> Path:
    log = tmp_path / "requests.jsonl"
    start_node(
        script="_cheating_node.py",
        env={"TALLY_CHEAT": cheat, "TALLY_CHEAT_LOG": str(log), **env},
    )
    return log


def _ask(client: Any, stream: bool, **kwargs: Any) -> Any:
    kwargs.setdefault("max_tokens", 64)
    out = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=stream, **kwargs)
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in out if c.choices)
        return text, out.tally
    return out.choices[0].message.content, out.tally


def _payable(info: Any, tally: Any, prompt: int) -> int:
    """The most completion tokens with ``cost <= deposit``, found by search (an oracle
    independent of the SDK's closed form)."""
    lo, hi = 0, 10**7
    while lo < hi:
        mid = (lo + hi + 1) // 2
        cost = cost_of(tally.input_tokens + prompt, tally.output_tokens + mid, info.prices)
        lo, hi = (mid, hi) if cost <= info.deposit else (lo, mid - 1)
    return lo


def _requests(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def _view(market: Any, client: Any, info: Any) -> dict[str, Any]:
    return dict(
        signed_get(market.endpoint, client, info, f"/v1/tally/channels/{info.hex_id}").json()
    )


def _refused_and_unpaid(market: Any, client: Any, info: Any, dispute: BillingDispute) -> None:
    """Nothing countersigned, the evidence stored, nothing claimable, the channel refused."""
    tally = client.store.tally(info.channel_id)
    assert tally.seq == 0 and tally.receipt is None
    (stored,) = client.store.disputes(info.channel_id)
    assert stored.id == dispute.dispute_id and stored.seq == 1
    assert {m["field"] for m in stored.mismatches} == {m.field for m in dispute.mismatches}
    assert _view(market, client, info)["countersigned"]["seq"] == 0
    assert "close --unilateral" in str(dispute) and "finalize" in str(dispute)
    with pytest.raises(ChannelDisputed, match="close --unilateral") as refused:
        _ask(client, False)
    assert refused.value.dispute_ids == [stored.id]
    assert market.escrow.get_channel(info.channel_id).paid == 0


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize(
    ("cheat", "field"),
    [
        ("special_ids", "specialIds"),  # 5 x <|endoftext|> before the last id
        ("big_ids", "vocabulary"),  # 5 ids >= the vocabulary size
        ("split", "tokensAboveCanonical"),  # every word in byte pieces
    ],
)
def test_ids_the_client_cannot_check_are_disputed_and_never_paid(
    market: Any,
    start_node: Any,
    make_client: Any,
    tmp_path: Path,
    cheat: str,
    field: str,
    stream: bool,
) -> None:
    _cheat(start_node, tmp_path, cheat)
    client = make_client(market.accounts.client, "client")
    info = client.channels.open(MODEL, DEPOSIT)
    with pytest.raises(BillingDispute) as caught:
        _ask(client, stream)
    assert field in [m.field for m in caught.value.mismatches]
    _refused_and_unpaid(market, client, info, caught.value)


def test_the_sdk_always_sends_a_max_tokens_the_deposit_can_pay(
    market: Any, start_node: Any, make_client: Any, tmp_path: Path
) -> None:
    log = _cheat(start_node, tmp_path, "")  # an honest node that logs what it was asked
    client = make_client(market.accounts.client, "client")
    deposit = 10**6  # about 330 output tokens at 3000 wei: less than the context window
    info = client.channels.open(MODEL, deposit)
    prompt = len(client.biller.prompt_counter(info).chat_prompt_ids(MESSAGES))

    def payable() -> int:
        return _payable(info, client.store.tally(info.channel_id), prompt)

    expected = [payable()]
    _ask(client, False, max_tokens=None)  # the caller gives none
    expected.append(payable())
    _ask(client, True, max_tokens=10**6)  # the caller gives more than the deposit pays
    expected.append(payable())
    sdk = client.openai(info)  # the official SDK, through the verifying transport
    sdk.chat.completions.create(model=MODEL, messages=MESSAGES)
    sent = _requests(log)
    assert [r["max_tokens"] for r in sent] == expected
    assert [r["applied"] for r in sent] == expected
    assert all(0 < n < info.context_length for n in expected)
    tally = client.store.tally(info.channel_id)
    assert tally.seq == 3 and cost_of(tally.input_tokens, tally.output_tokens, PRICES) <= deposit


def test_without_max_tokens_the_node_caps_its_default_to_the_deposit_and_says_so(
    market: Any, start_node: Any, make_client: Any, tmp_path: Path
) -> None:
    _cheat(start_node, tmp_path, "")
    client = make_client(market.accounts.client, "client")
    deposit = 2 * 10**5  # ~60 output tokens: below the node's default of 512
    info = client.channels.open(MODEL, deposit)
    resp = signed_post(
        market.endpoint,
        client,
        info,
        "/v1/chat/completions",
        {"model": MODEL, "messages": MESSAGES},
    )
    assert resp.status_code == 200, resp.text
    prompt = resp.json()["usage"]["prompt_tokens"]
    empty = client.store.tally(info.channel_id)
    assert int(resp.headers["x-tally-max-tokens"]) == _payable(info, empty, prompt)


def test_a_node_padding_a_request_without_max_tokens_to_the_deposit_is_disputed(
    market: Any, start_node: Any, make_client: Any, tmp_path: Path
) -> None:
    """Issue 11: "with no max_tokens, one request took the whole 1 USDC deposit"."""
    log = _cheat(start_node, tmp_path, "drain")
    client = make_client(market.accounts.client, "client")
    info = client.channels.open(MODEL, 3 * 10**5)
    with pytest.raises(BillingDispute) as caught:
        _ask(client, False, max_tokens=None)
    fields = {m.field for m in caught.value.mismatches}
    assert {"specialIds", "costAboveDeposit", "completionTokens<=max_tokens"} <= fields
    (sent,) = _requests(log)
    assert sent["max_tokens"] is not None  # the SDK sent one although the caller gave none
    _refused_and_unpaid(market, client, info, caught.value)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_bill_costing_more_than_the_deposit_is_never_countersigned(
    market: Any, start_node: Any, make_client: Any, tmp_path: Path, stream: bool
) -> None:
    # The node ignores the credit rule and max_tokens and bills every id it sent.
    reply = "the quick brown fox jumps over the lazy dog and " * 20
    _cheat(start_node, tmp_path, "over_deposit", TALLY_FAKE_REPLY=reply)
    client = make_client(market.accounts.client, "client")
    info = client.channels.open(MODEL, 10**5)  # the prompt and about 25 output tokens
    with pytest.raises(BillingDispute) as caught:
        _ask(client, stream, max_tokens=1000)
    got = {m.field: m for m in caught.value.mismatches}
    assert got["costAboveDeposit"].got > info.deposit
    _refused_and_unpaid(market, client, info, caught.value)


def test_a_stream_the_node_ends_itself_is_disputed_not_paid_past_what_arrived(
    market: Any, start_node: Any, make_client: Any, tmp_path: Path
) -> None:
    _cheat(start_node, tmp_path, "end_early", TALLY_FAKE_REPLY=SHORT)
    client = make_client(market.accounts.client, "client")
    info = client.channels.open(MODEL, DEPOSIT)
    with pytest.raises(BillingDispute) as caught:
        _ask(client, True)  # 3 chunks, then a clean close: no record, no [DONE]
    assert [m.field for m in caught.value.mismatches] == ["unseenTokens"]
    assert caught.value.evidence["ended_by_node"] is True
    _refused_and_unpaid(market, client, info, caught.value)


def test_a_stream_the_node_ends_itself_billing_only_what_it_sent_is_paid(
    market: Any, start_node: Any, make_client: Any, tmp_path: Path
) -> None:
    _cheat(start_node, tmp_path, "end_early_fair", TALLY_FAKE_REPLY=SHORT)
    client = make_client(market.accounts.client, "client")
    info = client.channels.open(MODEL, DEPOSIT)
    text, bill = _ask(client, True)
    assert bill is not None and text and SHORT.startswith(text) and text != SHORT
    counter = client.biller.counter(info)
    assert counter.decode(bill.completion_ids) == text  # paid exactly for what arrived
    assert client.store.disputes(info.channel_id) == []
    assert client.store.tally(info.channel_id).seq == 1


def test_an_answer_the_node_withholds_is_never_paid(
    market: Any, start_node: Any, make_client: Any, tmp_path: Path
) -> None:
    # Plain: a 200 whose body holds no answer; the node signed and kept the whole record.
    _cheat(start_node, tmp_path, "withhold", TALLY_FAKE_REPLY=SHORT)
    client = make_client(market.accounts.client, "client")
    info = client.channels.open(MODEL, DEPOSIT)
    with pytest.raises(ProtocolError):
        _ask(client, False)
    # Before the next request the SDK fetches the record: ids it never saw, not paid.
    with pytest.raises(BillingDispute) as caught:
        _ask(client, False)
    assert [m.field for m in caught.value.mismatches] == ["unseenTokens"]
    _refused_and_unpaid(market, client, info, caught.value)


def test_a_stream_the_node_withholds_is_never_paid(
    market: Any, start_node: Any, make_client: Any, tmp_path: Path
) -> None:
    _cheat(start_node, tmp_path, "withhold", TALLY_FAKE_REPLY=SHORT)
    client = make_client(market.accounts.client, "client")
    info = client.channels.open(MODEL, DEPOSIT)
    with pytest.raises(BillingDispute) as caught:
        _ask(client, True)  # headers, then a clean close: not one chunk
    assert [m.field for m in caught.value.mismatches] == ["unseenTokens"]
    _refused_and_unpaid(market, client, info, caught.value)
