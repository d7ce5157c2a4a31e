"""Client-side faults against a real node process on anvil: a client restarting mid-session,
and a unilateral close while the provider still holds unclaimed receipts."""

from __future__ import annotations

from typing import Any

import pytest
from tallystick.client import ChannelStateError, StoreError
from tallystick.protocol import ContractError, cost_of

from tests.kit.chain import MODEL, PRICES
from tests.kit.net import wait_for
from tests.kit.node import MESSAGES

pytestmark = pytest.mark.chain

DEPOSIT = 10**15


def _ask(client: Any, n: int, **kwargs: Any) -> None:
    for _ in range(n):
        reply = client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=16, **kwargs
        )
        assert reply.tally is not None


def test_a_restarted_client_continues_from_its_store_and_never_pays_twice(
    market: Any, start_node: Any, make_client: Any
) -> None:
    node = start_node()
    account = market.accounts.client
    # First life: receipts only travel piggybacked, so the last one is still undelivered
    # when the process "dies".
    first = make_client(account, "client", post_receipts=False)
    info = first.channels.open(MODEL, DEPOSIT)
    _ask(first, 4)
    before = first.store.tally(info.channel_id)
    assert before.seq == 4 and not before.delivered
    first.close()
    # Second life (same store file, new SDK object): goes on, then abandons a stream half-read.
    second = make_client(account, "client")
    _ask(second, 2)
    stream = second.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=16, stream=True
    )
    next(iter(stream))
    stream.close()
    second.close()
    # Third life: resolves the interrupted request from the node's record if it was billed.
    third = make_client(account, "client")
    _ask(third, 2)
    second = third
    tally = second.store.tally(info.channel_id)
    bill = second.bill(info.channel_id)
    assert tally.seq == len(bill) and [b.seq for b in bill] == list(range(1, tally.seq + 1))
    assert tally.seq in (
        8,
        9,
    )  # 4 + 2 + 2, plus the abandoned stream if the node billed what it sent
    assert sum(b.prompt_tokens for b in bill) == tally.input_tokens
    assert sum(b.completion_tokens for b in bill) == tally.output_tokens

    # The store refuses to countersign anything lower than what it already signed.
    old = bill[2]
    with pytest.raises(StoreError):
        second.store.record_verified(old.record, before.receipt, old.cost)
    assert second.store.tally(info.channel_id) == tally

    spent = cost_of(tally.input_tokens, tally.output_tokens, PRICES)
    wait_for(lambda: market.escrow.get_channel(info.channel_id).paid == spent, 30, "the claim")
    assert market.escrow.get_channel(info.channel_id).claimed_output == tally.output_tokens
    closed = second.channels.close(info.channel_id)
    assert (closed.paid, closed.refund) == (spent, DEPOSIT - spent)
    assert '"level": "error"' not in node.log()


def test_unilateral_close_the_worker_claims_in_the_challenge_period_then_finalize_refunds(
    market: Any, start_node: Any, make_client: Any, advance_time: Any
) -> None:
    # The worker would not claim on its own for an hour: only the close request makes it.
    start_node(args=["--settle-interval", "3600", "--claim-gas-multiple", "1000000000"])
    client = make_client(market.accounts.client, "client")
    info = client.channels.open(MODEL, DEPOSIT)
    _ask(client, 3)
    tally = client.store.tally(info.channel_id)
    spent = cost_of(tally.input_tokens, tally.output_tokens, PRICES)
    assert market.escrow.get_channel(info.channel_id).paid == 0  # unclaimed so far

    closes_at = client.channels.request_close(info.channel_id)
    wait_for(lambda: market.escrow.get_channel(info.channel_id).paid == spent, 30, "the claim")
    now = int(market.w3.eth.get_block("latest")["timestamp"])
    assert now < closes_at  # claimed inside the challenge period

    with pytest.raises(ChannelStateError, match=r"challenge period .* ends at"):
        client.channels.finalize(info.channel_id)  # the SDK says when, sends nothing
    with pytest.raises(ContractError) as early:
        client.chain.finalize(client.account, info.channel_id)
    assert early.value.name == "EscrowChallengeNotOver"
    assert early.value.args == (info.channel_id, closes_at)
    escrow_before = int(market.w3.eth.get_balance(market.escrow.address))

    advance_time(closes_at - now)
    closed = client.channels.finalize(info.channel_id)
    assert (closed.paid, closed.refund) == (spent, DEPOSIT - spent)
    assert int(market.w3.eth.get_balance(market.escrow.address)) == escrow_before - closed.refund
    assert market.escrow.get_channel(info.channel_id).status.name.lower() == "closed"
    with pytest.raises(ChannelStateError):
        client.channels.finalize(info.channel_id)
