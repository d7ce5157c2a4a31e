"""The client countersigns only ids it could check (docs/protocol.md §6, DESIGN.md guarantee 7).

``verify_bill`` on provider-signed records (no node), then the SDK's side: the ``max_tokens``
it always sends, and a disputed channel refused. The same cheats against a real node process
on anvil are in ``tests/reliability/test_padding.py``.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tallystick.client import (
    DEFAULT_TOLERANCE,
    BillingDispute,
    ChannelDisputed,
    InsufficientDeposit,
    Served,
    Tallystick,
    Tolerance,
    Wallet,
    verify_bill,
)
from tallystick.client._types import ChannelTally
from tallystick.client._verify import payable_output_tokens
from tallystick.protocol import (
    ZERO_ROOT,
    Prices,
    cost_of,
    hash_token_ids,
)

from tests.kit.client import MODEL, Bill, FakeNode, new_provider

MESSAGES = [{"role": "user", "content": "hello"}]
EMPTY = ChannelTally(0, 0, 0, ZERO_ROOT, None, True)


@pytest.fixture
def bill_of() -> Any:
    """``bill_of(ids, text, **kw)``: verify_bill on a record billing ``ids`` for ``text``."""
    wallet = Wallet.from_key("0x" + os.urandom(32).hex())
    fake = FakeNode(new_provider(), wallet.address, os.urandom(32))
    prompt = fake.counter.chat_prompt_ids(MESSAGES)

    def check(
        ids: list[int],
        text: str,
        *,
        deposit: int = 10**9,
        tolerance: Tolerance = DEFAULT_TOLERANCE,
        finish: str = "stop",
    ) -> Any:
        signed = fake.first_record(prompt, ids)
        info = replace(fake.channel_info(), deposit=deposit)
        served = Served(prompt, text, finish, (), None)
        return verify_bill(info, EMPTY, signed, ids, served, fake.counter, tolerance)

    check.counter = fake.counter  # type: ignore[attr-defined]
    check.prompt = prompt  # type: ignore[attr-defined]
    return check


def _fields(caught: pytest.ExceptionInfo[BillingDispute]) -> list[str]:
    return [m.field for m in caught.value.mismatches]


def test_an_honest_bill_with_its_end_of_sequence_id_is_accepted(bill_of: Any) -> None:
    counter = bill_of.counter
    ids = counter.canonical_ids("hello world")
    assert bill_of([*ids, *counter.eos_token_ids], "hello world").completion_tokens == 3


def test_a_special_id_is_accepted_only_as_the_one_last_id(bill_of: Any) -> None:
    counter = bill_of.counter
    ids = counter.canonical_ids("hello world")
    endoftext, eos = min(counter.special_token_ids), counter.eos_token_ids[0]
    assert bill_of([*ids, endoftext], "hello world").completion_tokens == 3  # ended there
    for padded in ([endoftext, *ids, eos], [*ids, eos, eos], [*ids[:1], eos, *ids[1:]]):
        with pytest.raises(BillingDispute) as caught:
            bill_of(padded, "hello world")
        assert "specialIds" in _fields(caught)


def test_ids_outside_the_vocabulary_are_refused(bill_of: Any) -> None:
    counter = bill_of.counter
    ids = counter.canonical_ids("hello world")
    for outside in (counter.vocab_size, counter.vocab_size + 1, 2**31):
        with pytest.raises(BillingDispute) as caught:
            bill_of([*ids, outside, *counter.eos_token_ids], "hello world")
        (vocab,) = [m for m in caught.value.mismatches if m.field == "vocabulary"]
        assert vocab.got == [outside]


def test_more_ids_than_the_canonical_encoding_allows_are_refused(bill_of: Any) -> None:
    counter = bill_of.counter
    text = "the quick brown fox jumps over the lazy dog"
    canonical = counter.canonical_ids(text)  # merged words: one id each
    split = list(text.encode())  # one id per byte in the tiny tokenizer
    assert counter.decode(split) == text
    loose = Tolerance(absolute=len(split) - len(canonical), relative=0)
    assert bill_of(split, text, tolerance=loose).completion_tokens == len(split)
    tight = Tolerance(absolute=len(split) - len(canonical) - 1, relative=0)
    with pytest.raises(BillingDispute) as caught:
        bill_of(split, text, tolerance=tight)
    assert _fields(caught) == ["tokensAboveCanonical"]
    with pytest.raises(BillingDispute):
        bill_of(split, text)  # the default tolerance: 4 + 5% of 9 canonical ids


def test_tolerance_is_absolute_plus_relative_rounded_down() -> None:
    assert Tolerance(4, 0.05).allowed(100) == 109
    assert Tolerance(4, 0.05).allowed(19) == 23
    assert Tolerance(0, 0).allowed(7) == 7
    with pytest.raises(ValueError):
        Tolerance(-1, 0)


def test_a_cumulative_cost_above_the_deposit_is_never_countersigned(bill_of: Any) -> None:
    counter = bill_of.counter
    ids = [*counter.canonical_ids("hello world"), *counter.eos_token_ids]
    cost = cost_of(len(bill_of.prompt), len(ids), Prices(2_000_000, 8_000_000))
    assert bill_of(ids, "hello world", deposit=cost).total_cost == cost
    with pytest.raises(BillingDispute) as caught:
        bill_of(ids, "hello world", deposit=cost - 1)
    (over,) = caught.value.mismatches
    assert (over.field, over.got) == ("costAboveDeposit", cost)


def test_every_mismatch_is_listed_at_once(bill_of: Any) -> None:
    counter = bill_of.counter
    ids = counter.canonical_ids("hello world")
    padded = [*ids, min(counter.special_token_ids), counter.vocab_size, *counter.eos_token_ids]
    with pytest.raises(BillingDispute) as caught:
        bill_of(padded, "hello world", deposit=1)
    assert set(_fields(caught)) == {"specialIds", "vocabulary", "costAboveDeposit"}


@given(
    deposit=st.integers(0, 10**12),
    input_price=st.integers(0, 10**9),
    output_price=st.integers(1, 10**9),
    spent_in=st.integers(0, 10**4),
    spent_out=st.integers(0, 10**4),
    prompt=st.integers(0, 10**4),
)
def test_payable_output_tokens_is_the_most_the_deposit_can_pay(
    deposit: int, input_price: int, output_price: int, spent_in: int, spent_out: int, prompt: int
) -> None:
    fake = FakeNode(new_provider(), new_provider().address, b"\x01" * 32)
    prices = Prices(input_price, output_price)
    info = replace(fake.channel_info(), deposit=deposit, prices=prices)
    tally = ChannelTally(1, spent_in, spent_out, ZERO_ROOT, None, True)
    n = payable_output_tokens(info, tally, prompt)
    total_in = spent_in + prompt
    if n >= 0:  # n more ids fit the deposit, one more does not
        assert cost_of(total_in, spent_out + n, prices) <= deposit
        assert cost_of(total_in, spent_out + n + 1, prices) > deposit
    else:  # nothing payable: even no completion at all costs more than the deposit
        assert cost_of(total_in, spent_out, prices) > deposit


# --- the SDK: max_tokens always sent and payable; a disputed channel refused --------------


def _client(fake: FakeNode, tmp_path: Any, deposit: int) -> Tallystick:
    wallet = Wallet.from_key("0x" + os.urandom(32).hex())
    fake.client_address = wallet.address
    client = Tallystick(wallet, tmp_path / "store.db", transport=fake.transport)
    client.store.add_channel(replace(fake.channel_info(), deposit=deposit))
    return client


def test_the_sdk_sends_max_tokens_when_the_caller_gives_none_or_too_many(tmp_path: Any) -> None:
    fake = FakeNode(new_provider(), "", os.urandom(32))
    with _client(fake, tmp_path, deposit=1_000) as client:  # 2 and 8 per token
        info = client.store.channels()[0]
        prompt = len(fake.counter.chat_prompt_ids(MESSAGES))
        expected = payable_output_tokens(info, EMPTY, prompt)
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
        assert fake.requests[-1]["max_tokens"] == expected < info.context_length
        tally = client.store.tally(info.channel_id)
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_completion_tokens=10**6)
        assert fake.requests[-1]["max_completion_tokens"] == payable_output_tokens(
            info, tally, prompt
        )
        client.openai(info).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3)
        assert fake.requests[-1]["max_tokens"] == 3  # a smaller one is sent as asked


def test_a_prompt_the_deposit_cannot_pay_is_not_sent(tmp_path: Any) -> None:
    fake = FakeNode(new_provider(), "", os.urandom(32))
    with _client(fake, tmp_path, deposit=10) as client, pytest.raises(InsufficientDeposit):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
    assert fake.requests == []


def test_after_a_dispute_the_sdk_sends_nothing_more_and_names_the_way_out(tmp_path: Any) -> None:
    fake = FakeNode(new_provider(), "", os.urandom(32))

    def pad(bill: Bill) -> None:
        ids = [*bill.completion_ids[:-1], 337, bill.completion_ids[-1]]  # <|endoftext|>
        bill.completion_ids = ids
        bill.record = replace(
            bill.record,
            completion_tokens=len(ids),
            completion_hash=hash_token_ids(ids),
            output_tokens=len(ids),
        )

    fake.tamper = pad
    with _client(fake, tmp_path, deposit=10**9) as client:
        info = client.store.channels()[0]
        with pytest.raises(BillingDispute, match="close --unilateral") as caught:
            client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16)
        assert _fields(caught) == ["specialIds"]
        sent = len(fake.requests)
        for call in (
            lambda: client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4),
            lambda: client.openai(info).chat.completions.create(model=MODEL, messages=MESSAGES),
            lambda: client.channels.close(info.channel_id),
        ):
            with pytest.raises(ChannelDisputed, match=f"close --unilateral {info.hex_id}"):
                call()
        assert len(fake.requests) == sent  # nothing more reached the node
