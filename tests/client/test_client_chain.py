"""The SDK on a real chain (anvil, real contracts): discovery, ETH and USDC channels, closes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tallystick.client import (
    Chain,
    ChannelStateError,
    ListingMismatch,
    OfferChanged,
    PriceChanged,
    ProviderNotFound,
    Tallystick,
    TokenChanged,
    Wallet,
)
from tallystick.client._disputes import utc
from tallystick.protocol import ChannelStatus, ContractError, Prices, cost_of, model_id

from tests.kit.chain import register_and_list
from tests.kit.client import ENDPOINT, MODEL, PRICES, FakeNode

pytestmark = pytest.mark.chain
MESSAGES = [{"role": "user", "content": "hello"}]
USDC_PRICES = Prices(input_per_m=1_000_000, output_per_m=3_000_000)


@pytest.fixture
def world(deployment: Any, accounts: Any, w3: Any) -> dict[str, Any]:
    """provider lists MODEL in ETH, provider2 in USDC; both at the fake node's endpoint."""
    fake = FakeNode(accounts.provider, accounts.client.address, bytes(32))
    fake.escrow = deployment.escrow.address
    fake.__post_init__()
    register_and_list(deployment, accounts.provider, ENDPOINT, MODEL, PRICES)
    usdc = deployment.usdc.address
    register_and_list(deployment, accounts.provider2, ENDPOINT, MODEL, USDC_PRICES, token=usdc)
    deployment.usdc.mint(accounts.deployer, accounts.client.address, 10**9)
    return {"fake": fake, "deployment": deployment, "accounts": accounts, "w3": w3}


@pytest.fixture
def client(world: dict[str, Any], tmp_path: Path) -> Iterator[Tallystick]:
    d = world["deployment"]
    chain = Chain(world["w3"], d.registry.address, d.escrow.address)
    wallet = Wallet(world["accounts"].client)
    with Tallystick(wallet, tmp_path / "c.db", chain=chain, transport=world["fake"].transport) as c:
        yield c


def _use(fake: FakeNode, channel_id: bytes, provider: Any) -> None:
    fake.channel_id, fake.provider = channel_id, provider


def test_discovery_filters_by_model_and_price(client: Tallystick, world: dict[str, Any]) -> None:
    a = world["accounts"]
    offers = client.providers(MODEL)
    assert [o.provider for o in offers] == [a.provider2.address, a.provider.address]  # cheapest
    assert offers[1].prices == PRICES and offers[1].endpoint == ENDPOINT
    assert offers[0].token == world["deployment"].usdc.address
    assert [o.provider for o in client.providers(MODEL, max_output_price=4_000_000)] == [
        a.provider2.address
    ]
    assert client.providers("no-such-model") == []
    with pytest.raises(ProviderNotFound):
        client.channels.open("no-such-model", 10**6)


def test_node_disagreeing_with_its_listing_is_refused(
    client: Tallystick, world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = world["fake"]
    honest = fake.model_entry
    monkeypatch.setattr(fake, "model_entry", lambda: {**honest(), "context_length": 4096})
    with pytest.raises(ListingMismatch, match="context length: chain 2048, node 4096"):
        client.channels.open(MODEL, 10**15, world["accounts"].provider.address)
    assert client.channels.list() == []


def test_eth_channel_topup_chat_and_cooperative_close(
    client: Tallystick, world: dict[str, Any]
) -> None:
    a, d, fake = world["accounts"], world["deployment"], world["fake"]
    info = client.channels.open(MODEL, 10**15, a.provider.address)
    _use(fake, info.channel_id, a.provider)
    assert d.escrow.get_channel(info.channel_id).deposit == 10**15
    info = client.channels.top_up(info.channel_id, 5 * 10**14)
    assert info.deposit == 15 * 10**14
    client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16)
    bill = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16).tally
    r = bill.record.record
    spent = cost_of(r.input_tokens, r.output_tokens, PRICES)
    balance = client.channels.balance(info.channel_id)
    assert (balance.spent, balance.paid, balance.refundable) == (spent, 0, 15 * 10**14 - spent)
    closed = client.channels.close(info.channel_id)
    assert (closed.paid, closed.refund) == (spent, 15 * 10**14 - spent)
    assert d.escrow.earnings(a.provider.address) == spent
    assert client.channels.balance(info.channel_id).status == ChannelStatus.CLOSED


def test_usdc_channel_unilateral_close_refunds_what_was_not_claimed(
    client: Tallystick, world: dict[str, Any]
) -> None:
    a, d, fake, w3 = world["accounts"], world["deployment"], world["fake"], world["w3"]
    before = d.usdc.balance_of(a.client.address)
    fake.prices = USDC_PRICES
    info = client.channels.open(MODEL, 10**6, a.provider2.address)  # approve handled
    _use(fake, info.channel_id, a.provider2)
    assert d.usdc.balance_of(a.client.address) == before - 10**6
    bill = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16).tally
    receipt = client.store.tally(info.channel_id).receipt
    client.channels.request_close(info.channel_id)
    d.escrow.claim(a.provider2, receipt)  # the provider claims during the challenge period
    w3.provider.make_request("evm_increaseTime", [3601])
    w3.provider.make_request("evm_mine", [])
    closed = client.channels.finalize(info.channel_id)
    assert closed.paid == bill.total_cost
    assert closed.refund == 10**6 - bill.total_cost
    assert d.usdc.balance_of(a.client.address) == before - bill.total_cost


def test_finalize_before_the_challenge_period_says_when_it_ends(
    client: Tallystick, world: dict[str, Any]
) -> None:
    a = world["accounts"]
    info = client.channels.open(MODEL, 10**15, a.provider.address)
    with pytest.raises(ChannelStateError):
        client.channels.finalize(info.channel_id)  # not closing yet
    closes_at = client.channels.request_close(info.channel_id)
    # Refused before a transaction is sent (the escrow would revert EscrowChallengeNotOver).
    with pytest.raises(ChannelStateError, match=f"ends at {utc(closes_at)}"):
        client.channels.finalize(info.channel_id)
    with pytest.raises(ContractError) as caught:
        client.chain.finalize(client.account, info.channel_id)
    assert caught.value.name == "EscrowChallengeNotOver"


def _front_run(client: Tallystick, world: dict[str, Any], provider: Any, raised: Prices) -> None:
    """The provider's ``setPrice`` is mined after discovery and the node check, before ``open``."""
    original = client.chain.open_channel

    def open_after_price_change(*args: Any, **kwargs: Any) -> Any:
        world["deployment"].registry.set_price(provider, model_id(MODEL), raised)
        return original(*args, **kwargs)

    client.chain.open_channel = open_after_price_change  # type: ignore[method-assign]


def test_a_price_raised_between_discovery_and_open_is_refused(
    client: Tallystick, world: dict[str, Any]
) -> None:
    a, d, w3 = world["accounts"], world["deployment"], world["w3"]
    raised = Prices(PRICES.input_per_m, PRICES.output_per_m * 5)
    _front_run(client, world, a.provider, raised)
    nonce, own = len(d.escrow.channels_opened()), int(w3.eth.get_balance(a.client.address))
    with pytest.raises(PriceChanged) as caught:
        # Caps far above the listing: the limits of the open are still the discovered prices.
        client.channels.open(MODEL, 10**15, a.provider.address, max_output_price=10**30)
    assert (caught.value.accepted, caught.value.current) == (PRICES, raised)
    assert isinstance(caught.value, OfferChanged) and caught.value.provider == a.provider.address
    assert str(caught.value) == (
        f"provider {a.provider.address} raised its price for {MODEL!r} before the channel "
        f"opened: accepted input {PRICES.input_per_m} / output {PRICES.output_per_m} per "
        f"million tokens, now input {raised.input_per_m} / output {raised.output_per_m} per "
        "million tokens; the escrow refused the open and nothing was deposited (open again to "
        "accept the new price)"
    )
    cause = caught.value.__cause__
    assert isinstance(cause, ContractError) and cause.name == "EscrowPriceAboveLimit"
    assert len(d.escrow.channels_opened()) == nonce
    assert int(w3.eth.get_balance(a.client.address)) == own
    assert client.channels.list() == []
    del client.chain.open_channel  # the provider stops raising; the node shows the new price
    world["fake"].prices = raised
    info = client.channels.open(MODEL, 10**15, a.provider.address)
    assert info.prices == raised == d.escrow.get_channel(info.channel_id).prices


def test_a_usdc_open_refused_for_its_price_moves_no_token(
    client: Tallystick, world: dict[str, Any]
) -> None:
    a, d = world["accounts"], world["deployment"]
    world["fake"].prices = USDC_PRICES
    before = d.usdc.balance_of(a.client.address)
    _front_run(client, world, a.provider2, Prices(USDC_PRICES.input_per_m + 1, 0))
    with pytest.raises(PriceChanged, match=r"now input 1000001 / output 0 per million"):
        client.channels.open(MODEL, 10**6, a.provider2.address)
    assert d.usdc.balance_of(a.client.address) == before
    assert d.usdc.balance_of(d.escrow.address) == 0


def test_the_store_follows_the_chain_back_after_a_reorg_drops_a_top_up(
    client: Tallystick, world: dict[str, Any]
) -> None:
    a, d, w3 = world["accounts"], world["deployment"], world["w3"]
    info = client.channels.open(MODEL, 10**15, a.provider.address)
    assert client.channels.top_up(info.channel_id, 5 * 10**14).deposit == 15 * 10**14
    # A real reorg: the block holding the top-up is replaced by an empty one (anvil_reorg).
    w3.provider.make_request("anvil_reorg", [1, []])
    assert d.escrow.get_channel(info.channel_id).deposit == 10**15
    assert client.channel(info.channel_id).deposit == 15 * 10**14  # the store still has it
    assert client.channels.sync(info.channel_id).deposit == 10**15
    # With confirmations, a top-up counts only once that many blocks sit on top of it.
    client.channels.top_up(info.channel_id, 2 * 10**14)
    assert client.channels.sync(info.channel_id, confirmations=2).deposit == 10**15
    w3.provider.make_request("anvil_mine", [2])
    assert client.channels.sync(info.channel_id, confirmations=2).deposit == 12 * 10**14


def test_a_token_switched_between_discovery_and_open_is_refused_and_leaves_no_allowance(
    client: Tallystick, world: dict[str, Any]
) -> None:
    """Issue 10, hole 3: the provider re-lists the model in another ERC-20 at the same prices
    after the client checked the offer; a standing allowance for that token is not enough."""
    from tallystick.protocol import deploy

    a, d, fake = world["accounts"], world["deployment"], world["fake"]
    other = deploy(world["w3"], a.deployer).usdc  # a second ERC-20
    other.mint(a.deployer, a.client.address, 10**9)
    other.approve(a.client, d.escrow.address, 10**9)  # a standing allowance for the new token
    fake.prices = USDC_PRICES
    original = client.chain.open_channel

    def open_after_token_switch(*args: Any, **kwargs: Any) -> Any:
        d.registry.list_model(
            a.provider2,
            MODEL,
            USDC_PRICES,
            token=other.address,
            tokenizer_hash=fake.bundle.hash(),
            context_length=2048,
        )
        return original(*args, **kwargs)

    client.chain.open_channel = open_after_token_switch  # type: ignore[method-assign]
    before = (d.usdc.balance_of(a.client.address), other.balance_of(a.client.address))
    with pytest.raises(TokenChanged) as caught:
        client.channels.open(MODEL, 10**6, a.provider2.address)
    assert (caught.value.accepted, caught.value.listed) == (d.usdc.address, other.address)
    assert isinstance(caught.value, OfferChanged) and caught.value.model == MODEL
    assert "nothing was deposited" in str(caught.value)
    assert (d.usdc.balance_of(a.client.address), other.balance_of(a.client.address)) == before
    assert d.usdc.allowance(a.client.address, d.escrow.address) == 0, "approval taken back"
    assert client.channels.list() == []


def test_an_erc20_open_and_top_up_leave_no_allowance_behind(
    client: Tallystick, world: dict[str, Any]
) -> None:
    a, d, fake = world["accounts"], world["deployment"], world["fake"]
    fake.prices = USDC_PRICES
    info = client.channels.open(MODEL, 10**6, a.provider2.address)
    assert d.usdc.allowance(a.client.address, d.escrow.address) == 0
    client.channels.top_up(info.channel_id, 10**5)
    assert d.usdc.allowance(a.client.address, d.escrow.address) == 0
    assert d.escrow.get_channel(info.channel_id).deposit == 11 * 10**5
