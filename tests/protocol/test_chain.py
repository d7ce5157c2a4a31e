"""The bindings against the real contracts on anvil: every write, the event queries, and
reverts decoded into ContractError with the exact custom error and arguments.

Over 450 lines on purpose: one module per binding surface, against one deployed market.
"""

from __future__ import annotations

from typing import Any

import pytest
from eth_account import Account
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tallystick.protocol import (
    ETH,
    ZERO_ROOT,
    ChainUnavailable,
    ChannelStatus,
    ContractError,
    Prices,
    Receipt,
    channel_id,
    connect,
    cost_of,
    model_id,
    new_salt,
    receipt_message,
    sign_receipt,
)
from tallystick.protocol._eip712 import digest

pytestmark = pytest.mark.chain


MODEL = "SmolLM2-135M-Instruct"
PRICES = Prices(input_per_m=150_000_000, output_per_m=600_000_000)  # wei per million tokens
DEPOSIT = 10**15


def list_eth_model(d: Any, provider: Any, name: str = MODEL, prices: Prices = PRICES) -> bytes:
    if not d.registry.get_provider(provider.address).registered:
        d.registry.register(provider, "http://127.0.0.1:8000", '{"region":"local"}')
    result = d.registry.list_model(
        provider, name, prices, tokenizer_hash=b"\x42" * 32, context_length=8192
    )
    return bytes(result.value)


def limits(prices: Prices, token: str = ETH) -> dict[str, Any]:
    """``Escrow.open``'s token and price limits: the listing the client was quoted."""
    return {
        "token": token,
        "max_input_price_per_m": prices.input_per_m,
        "max_output_price_per_m": prices.output_per_m,
    }


def open_eth(d: Any, accounts: Any, amount: int = DEPOSIT) -> bytes:
    mid = list_eth_model(d, accounts.provider)
    opened = d.escrow.open(
        accounts.client, accounts.provider.address, mid, amount, **limits(PRICES)
    )
    return bytes(opened.value)


def signed(d: Any, signer: Any, cid: bytes, i: int, o: int, root: bytes = ZERO_ROOT):
    return sign_receipt(signer, d.escrow.domain, Receipt(cid, i, o, root))


def balance(w3: Any, address: str) -> int:
    return int(w3.eth.get_balance(address))


def test_connect_to_a_dead_endpoint_is_chain_unavailable() -> None:
    with pytest.raises(ChainUnavailable) as caught:
        connect("http://127.0.0.1:9", timeout_s=2)
    # The reason itself, not urllib3's HTTPConnectionPool(...) Max retries ... text.
    assert str(caught.value) == "cannot reach the chain at http://127.0.0.1:9: connection refused"


def test_receipt_digest_and_typehash_equal_the_contract(deployment: Any, accounts: Any) -> None:
    d = deployment
    receipt = Receipt(b"\x01" * 32, 2**64 - 1, 12345, b"\xfe" * 32)
    assert d.escrow.receipt_digest(receipt) == digest(receipt_message(d.escrow.domain, receipt))
    from tallystick.protocol._types import RECEIPT_TYPEHASH

    assert d.escrow.receipt_typehash() == RECEIPT_TYPEHASH
    assert d.escrow.domain.chain_id == 31337


def test_register_and_list(deployment: Any, accounts: Any) -> None:
    d, provider = deployment, accounts.provider
    mid = list_eth_model(d, provider)
    assert mid == model_id(MODEL)
    info = d.registry.get_provider(provider.address)
    assert (info.endpoint, info.metadata, info.registered) == (
        "http://127.0.0.1:8000",
        '{"region":"local"}',
        True,
    )
    assert d.registry.providers() == [provider.address]
    assert d.registry.models_of(provider.address) == [mid]
    listing = d.registry.get_listing(provider.address, mid)
    assert (listing.name, listing.prices, listing.token) == (MODEL, PRICES, ETH)
    assert (listing.tokenizer_hash, listing.context_length, listing.active) == (
        b"\x42" * 32,
        8192,
        True,
    )
    assert d.registry.quote(provider.address, mid) == (PRICES, ETH)
    d.registry.set_price(provider, mid, Prices(1, 2))
    assert d.registry.get_listing(provider.address, mid).prices == Prices(1, 2)
    d.registry.delist(provider, mid)
    assert not d.registry.is_listed(provider.address, mid)


def test_model_hash_and_published_audits(deployment: Any, accounts: Any) -> None:
    """§10: the listing carries modelHash; a failed audit is published as an event (gas)."""
    d, provider, client = deployment, accounts.provider, accounts.client
    mid = list_eth_model(d, provider)
    assert d.registry.get_listing(provider.address, mid).model_hash == bytes(32)
    set_hash = d.registry.set_model_hash(provider, mid, b"\x0c" * 32)
    assert d.registry.get_listing(provider.address, mid).model_hash == b"\x0c" * 32
    uri = "https://reports.example/0123456789abcdef.json"
    tx = d.registry.report_audit(client, provider.address, mid, b"\x0d" * 32, uri)
    (event,) = d.registry.audit_reports(provider.address)
    assert event.args["reporter"] == client.address
    assert (event.args["reportHash"], event.args["uri"]) == (b"\x0d" * 32, uri)
    assert d.registry.audit_reports(client.address) == []
    # a cheap publication: an event, no storage (printed for the docs)
    print(f"setModelHash {set_hash.gas_used} gas, reportAudit {tx.gas_used} gas")
    assert tx.gas_used < 40_000


def test_open_eth_channel(deployment: Any, accounts: Any, w3: Any) -> None:
    d, client, provider = deployment, accounts.client, accounts.provider
    mid = list_eth_model(d, provider)
    salt = new_salt()
    before = balance(w3, d.escrow.address)
    start = d.escrow.block_number()
    result = d.escrow.open(client, provider.address, mid, DEPOSIT, **limits(PRICES), salt=salt)
    cid = result.value
    assert cid == channel_id(d.escrow.address, client.address, provider.address, mid, salt)
    assert cid == d.escrow.channel_id(client.address, provider.address, mid, salt)
    assert balance(w3, d.escrow.address) - before == DEPOSIT
    state = d.escrow.get_channel(cid)
    assert (state.client, state.provider, state.token) == (client.address, provider.address, ETH)
    assert (state.status, state.prices, state.deposit, state.paid) == (
        ChannelStatus.OPEN,
        PRICES,
        DEPOSIT,
        0,
    )
    by_provider = d.escrow.channels_opened(start, provider=provider.address)
    assert [e.args["channelId"] for e in by_provider] == [cid]
    assert d.escrow.channels_opened(start, channel_id=cid)[0].args["deposit"] == DEPOSIT
    assert d.escrow.channels_opened(start, provider=accounts.provider2.address) == []


def test_open_usdc_channel_approves_and_tops_up(deployment: Any, accounts: Any) -> None:
    d, client, provider = deployment, accounts.client, accounts.provider
    d.registry.register(provider, "http://node")
    mid = d.registry.list_model(
        provider,
        "usdc-model",
        Prices(2_000_000, 8_000_000),
        token=d.usdc.address,
        context_length=2048,
    ).value
    d.usdc.mint(client, client.address, 50_000_000)
    quoted = limits(Prices(2_000_000, 8_000_000), d.usdc.address)
    result = d.escrow.open(client, provider.address, mid, 20_000_000, **quoted)
    assert [e.name for e in result.events].count("Transfer") == 1
    cid = result.value
    state = d.escrow.get_channel(cid)
    assert (state.token, state.deposit) == (d.usdc.address, 20_000_000)
    assert d.usdc.balance_of(d.escrow.address) == 20_000_000
    assert d.usdc.allowance(client.address, d.escrow.address) == 0, "approved exactly"
    d.escrow.top_up(client, cid, 5_000_000)
    assert d.escrow.get_channel(cid).deposit == 25_000_000
    assert d.usdc.balance_of(client.address) == 25_000_000
    assert d.usdc.allowance(client.address, d.escrow.address) == 0


def test_top_up_eth(deployment: Any, accounts: Any) -> None:
    cid = open_eth(deployment, accounts)
    result = deployment.escrow.top_up(accounts.client, cid, 5)
    assert result.event("ChannelToppedUp").args == {
        "channelId": cid,
        "amount": 5,
        "deposit": DEPOSIT + 5,
    }


def test_claim_pays_the_cost_and_withdraw_pulls_it(deployment: Any, accounts: Any, w3) -> None:
    d, provider = deployment, accounts.provider
    cid = open_eth(d, accounts)
    start = d.escrow.block_number()
    first = d.escrow.claim(provider, signed(d, accounts.client, cid, 1000, 500))
    assert first.value == cost_of(1000, 500, PRICES)
    second = d.escrow.claim(provider, signed(d, accounts.client, cid, 3000, 900, b"\x01" * 32))
    assert second.value == cost_of(3000, 900, PRICES) - cost_of(1000, 500, PRICES)
    claimed = d.escrow.receipts_claimed(start, channel_id=cid)
    assert [(e.args["inputTokens"], e.args["usageRoot"]) for e in claimed] == [
        (1000, ZERO_ROOT),
        (3000, b"\x01" * 32),
    ]
    earned = d.escrow.earnings(provider.address, ETH)
    assert earned == cost_of(3000, 900, PRICES)
    before = balance(w3, accounts.provider2.address)
    assert d.escrow.withdraw(provider, ETH, to=accounts.provider2.address).value == earned
    assert balance(w3, accounts.provider2.address) - before == earned
    with pytest.raises(ContractError) as exc:
        d.escrow.withdraw(provider, ETH)
    assert (exc.value.name, exc.value.args) == ("EscrowNothingToWithdraw", (provider.address, ETH))


def test_claim_many_skips_bad_receipts_with_decoded_reasons(deployment: Any, accounts: Any) -> None:
    d, client = deployment, accounts.client
    cid = open_eth(d, accounts)
    cid2 = open_eth(d, accounts)
    start = d.escrow.block_number()
    batch = [
        signed(d, client, cid, 100, 100),
        signed(d, accounts.other, cid2, 100, 100),  # not the channel's client
        signed(d, client, cid, 100, 100),  # not newer than the first
        signed(d, client, cid2, 50, 10),
    ]
    result = d.escrow.claim_many(accounts.provider, batch)
    assert result.value == cost_of(100, 100, PRICES) + cost_of(50, 10, PRICES)
    reasons = [(s.index, s.channel_id, s.reason.name, s.reason.args) for s in result.skipped]
    assert reasons == [
        (1, cid2, "EscrowInvalidSigner", (accounts.other.address, client.address)),
        (2, cid, "EscrowReceiptNotNewer", (100, 100)),
    ]
    queried = d.escrow.receipts_skipped(start)
    assert [(s.index, s.reason.name) for s in queried] == [
        (1, "EscrowInvalidSigner"),
        (2, "EscrowReceiptNotNewer"),
    ]
    gas = d.escrow.estimate_claim_many_gas(
        accounts.provider.address, [signed(d, client, cid, 200, 200)]
    )
    assert 30_000 < gas < 200_000


def test_request_close_then_finalize_after_the_challenge(
    deployment: Any, accounts: Any, w3: Any, advance_time: Any
) -> None:
    d, client = deployment, accounts.client
    cid = open_eth(d, accounts)
    d.escrow.claim(accounts.provider, signed(d, client, cid, 1000, 1000))
    start = d.escrow.block_number()
    closes_at = d.escrow.request_close(client, cid).value
    assert d.escrow.get_channel(cid).status == ChannelStatus.CLOSING
    [event] = d.escrow.close_requests(start)
    assert (event.args["channelId"], event.args["closesAt"]) == (cid, closes_at)
    with pytest.raises(ContractError) as exc:
        d.escrow.finalize(accounts.other, cid)
    assert (exc.value.name, exc.value.args) == ("EscrowChallengeNotOver", (cid, closes_at))
    # The provider may still claim during the challenge period.
    d.escrow.claim(accounts.provider, signed(d, client, cid, 2000, 2000))
    assert advance_time(3600) >= closes_at
    before = balance(w3, client.address)
    refund = d.escrow.finalize(accounts.other, cid).value
    assert refund == DEPOSIT - cost_of(2000, 2000, PRICES)
    assert balance(w3, client.address) - before == refund
    assert d.escrow.get_channel(cid).status == ChannelStatus.CLOSED
    with pytest.raises(ContractError) as exc:
        d.escrow.claim(accounts.provider, signed(d, client, cid, 3000, 3000))
    assert (exc.value.name, exc.value.args) == ("EscrowChannelClosed", (cid,))


def test_close_cooperative(deployment: Any, accounts: Any) -> None:
    d, client, provider = deployment, accounts.client, accounts.provider
    cid = open_eth(d, accounts)
    final = signed(d, client, cid, 4000, 1000)
    provider_sig = sign_receipt(provider, d.escrow.domain, final.receipt).signature
    with pytest.raises(ContractError) as exc:
        d.escrow.close_cooperative(client, final, final.signature)
    assert (exc.value.name, exc.value.args) == (
        "EscrowInvalidProviderSigner",
        (client.address, provider.address),
    )
    refund = d.escrow.close_cooperative(client, final, provider_sig).value
    assert refund == DEPOSIT - cost_of(4000, 1000, PRICES)
    state = d.escrow.get_channel(cid)
    assert (state.status, state.paid, state.claimed_input) == (
        ChannelStatus.CLOSED,
        cost_of(4000, 1000, PRICES),
        4000,
    )


def test_session_key_receipts_are_paid(deployment: Any, accounts: Any) -> None:
    d = deployment
    cid = open_eth(d, accounts)
    key = Account.create()
    d.escrow.authorize_session_key(accounts.client, cid, key.address)
    assert d.escrow.get_channel(cid).session_key == key.address
    assert d.escrow.claim(accounts.provider, signed(d, key, cid, 10, 10)).value == cost_of(
        10, 10, PRICES
    )


def test_reverts_are_decoded_with_exact_names_and_args(deployment: Any, accounts: Any) -> None:
    d = deployment
    cid = open_eth(d, accounts)
    with pytest.raises(ContractError) as exc:
        d.escrow.top_up(accounts.client2, cid, 1)
    assert (exc.value.name, exc.value.args) == (
        "EscrowNotClient",
        (accounts.client2.address, accounts.client.address),
    )
    assert (
        str(exc.value) == f"EscrowNotClient({accounts.client2.address}, {accounts.client.address})"
    )
    with pytest.raises(ContractError) as exc:
        d.escrow.open(
            accounts.client, accounts.provider.address, model_id(MODEL), 0, **limits(PRICES)
        )
    assert (exc.value.name, exc.value.args) == ("EscrowZeroAmount", ())
    with pytest.raises(ContractError) as exc:
        d.registry.register(accounts.provider, "http://again")
    assert (exc.value.name, exc.value.args) == (
        "RegistryAlreadyRegistered",
        (accounts.provider.address,),
    )
    with pytest.raises(ContractError) as exc:
        d.escrow.cost_of(b"\x09" * 32, 1, 1)
    assert (exc.value.name, exc.value.args) == ("EscrowChannelNotFound", (b"\x09" * 32,))


def test_output_price_above_uint88_is_refused_by_the_registry(
    deployment: Any, accounts: Any
) -> None:
    """A listing no channel could hold is refused when listed or priced, not at open."""
    d, provider = deployment, accounts.provider
    with pytest.raises(ContractError) as exc:
        list_eth_model(d, provider, "huge", Prices(1, 2**88))
    assert (exc.value.name, exc.value.args) == ("RegistryOutputPriceTooLarge", (2**88, 2**88 - 1))
    mid = list_eth_model(d, provider, "largest", Prices(2**96 - 1, 2**88 - 1))
    with pytest.raises(ContractError) as exc:
        d.registry.set_price(provider, mid, Prices(1, 2**96 - 1))
    assert (exc.value.name, exc.value.args) == (
        "RegistryOutputPriceTooLarge",
        (2**96 - 1, 2**88 - 1),
    )
    largest = Prices(2**96 - 1, 2**88 - 1)
    cid = d.escrow.open(accounts.client, provider.address, mid, 1, **limits(largest)).value
    assert d.escrow.get_channel(cid).prices == largest


def test_open_is_refused_when_the_price_rose_after_the_quote(
    deployment: Any, accounts: Any, w3: Any
) -> None:
    """Front-running: the provider raises its price between the client's quote and its open."""
    d, client, provider = deployment, accounts.client, accounts.provider
    mid = list_eth_model(d, provider)
    quoted, _ = d.registry.quote(provider.address, mid)
    raised = Prices(quoted.input_per_m, quoted.output_per_m * 2)
    d.registry.set_price(provider, mid, raised)
    salt = new_salt()
    held, own = balance(w3, d.escrow.address), balance(w3, client.address)
    with pytest.raises(ContractError) as exc:
        d.escrow.open(client, provider.address, mid, DEPOSIT, **limits(quoted), salt=salt)
    assert (exc.value.name, exc.value.args) == (
        "EscrowPriceAboveLimit",
        (raised.input_per_m, raised.output_per_m, quoted.input_per_m, quoted.output_per_m),
    )
    assert str(exc.value) == (
        f"EscrowPriceAboveLimit({raised.input_per_m}, {raised.output_per_m}, "
        f"{quoted.input_per_m}, {quoted.output_per_m})"
    )
    cid = d.escrow.channel_id(client.address, provider.address, mid, salt)
    assert d.escrow.get_channel(cid).status == ChannelStatus.NONE, "no channel was opened"
    assert balance(w3, d.escrow.address) == held
    assert balance(w3, client.address) == own, "refused before any transaction was sent"
    cid = d.escrow.open(client, provider.address, mid, DEPOSIT, **limits(raised)).value
    assert d.escrow.get_channel(cid).prices == raised, "the client may accept the new price"


def test_a_usdc_open_above_the_limit_moves_no_token(deployment: Any, accounts: Any) -> None:
    d, client, provider = deployment, accounts.client, accounts.provider
    d.registry.register(provider, "http://node")
    quoted = Prices(2_000_000, 8_000_000)
    mid = d.registry.list_model(
        provider, "usdc-model", quoted, token=d.usdc.address, context_length=2048
    ).value
    d.registry.set_price(provider, mid, Prices(2_000_001, 8_000_000))
    d.usdc.mint(client, client.address, 50_000_000)
    with pytest.raises(ContractError) as exc:
        d.escrow.open(client, provider.address, mid, 20_000_000, **limits(quoted, d.usdc.address))
    assert (exc.value.name, exc.value.args) == (
        "EscrowPriceAboveLimit",
        (2_000_001, 8_000_000, 2_000_000, 8_000_000),
    )
    assert d.usdc.balance_of(client.address) == 50_000_000
    assert d.usdc.balance_of(d.escrow.address) == 0
    assert d.usdc.allowance(client.address, d.escrow.address) == 0, "no allowance left behind"


def test_open_is_refused_when_the_listing_token_changed_and_the_allowance_is_restored(
    deployment: Any, accounts: Any, w3: Any
) -> None:
    """Issue 10, hole 3: the provider re-lists the model in another token before the open."""
    from tallystick.protocol import deploy

    d, client, provider = deployment, accounts.client, accounts.provider
    other = deploy(w3, accounts.deployer).usdc  # a second ERC-20 at another address
    d.registry.register(provider, "http://node")
    quoted = Prices(2_000_000, 8_000_000)
    mid = d.registry.list_model(
        provider, "usdc-model", quoted, token=d.usdc.address, context_length=2048
    ).value
    d.registry.list_model(provider, "usdc-model", quoted, token=other.address, context_length=2048)
    for token in (d.usdc, other):
        token.mint(client, client.address, 50_000_000)
        token.approve(client, d.escrow.address, 7)  # a standing allowance the client had set
    with pytest.raises(ContractError) as exc:
        d.escrow.open(client, provider.address, mid, 20_000_000, **limits(quoted, d.usdc.address))
    assert (exc.value.name, exc.value.args) == (
        "EscrowTokenMismatch",
        (other.address, d.usdc.address),
    )
    for token in (d.usdc, other):
        assert token.balance_of(client.address) == 50_000_000
        assert token.allowance(client.address, d.escrow.address) == 7, "restored, not left at 20M"


def test_only_the_provider_claims_and_only_a_party_closes(deployment: Any, accounts: Any) -> None:
    """Issue 10, hole 1: nobody but the provider moves a channel's claimed totals."""
    d, client, provider = deployment, accounts.client, accounts.provider
    cid = open_eth(d, accounts)
    jam = signed(d, client, cid, 6001, 500)
    for caller in (client, accounts.other):
        with pytest.raises(ContractError) as exc:
            d.escrow.claim(caller, jam)
        assert (exc.value.name, exc.value.args) == (
            "EscrowNotProvider",
            (caller.address, provider.address),
        )
    skipped = d.escrow.claim_many(client, [jam]).skipped
    assert [(s.reason.name, s.reason.args) for s in skipped] == [
        ("EscrowNotProvider", (client.address, provider.address))
    ]
    final = signed(d, client, cid, 100, 100)
    provider_sig = sign_receipt(provider, d.escrow.domain, final.receipt).signature
    with pytest.raises(ContractError) as exc:
        d.escrow.close_cooperative(accounts.other, final, provider_sig)
    assert (exc.value.name, exc.value.args) == (
        "EscrowNotParty",
        (accounts.other.address, client.address, provider.address),
    )
    assert d.escrow.get_channel(cid).claimed_input == 0
    assert d.escrow.close_cooperative(provider, final, provider_sig).value == DEPOSIT - cost_of(
        100, 100, PRICES
    )


def test_a_retired_session_key_pays_for_one_challenge_period(
    deployment: Any, accounts: Any, advance_time: Any
) -> None:
    """Issue 10, hole 2 (§7.3): a key change keeps the old key's receipts claimable a while."""
    d, client, provider = deployment, accounts.client, accounts.provider
    cid = open_eth(d, accounts)
    old, new = Account.create(), Account.create()
    d.escrow.authorize_session_key(client, cid, old.address)
    before_change = signed(d, old, cid, 40_000, 20_000)
    start = d.escrow.block_number()
    d.escrow.authorize_session_key(client, cid, new.address)
    valid_until = d.escrow.retired_key_valid_until(cid, old.address)
    [event] = d.escrow.key_retirements(start, channel_id=cid)
    assert event.args == {"channelId": cid, "sessionKey": old.address, "validUntil": valid_until}
    assert d.escrow.retired_key_valid_until(cid, new.address) == 0
    assert d.escrow.claim(provider, before_change).value == cost_of(40_000, 20_000, PRICES)
    assert advance_time(3600) >= valid_until
    with pytest.raises(ContractError) as exc:
        d.escrow.claim(provider, signed(d, old, cid, 50_000, 20_000))
    assert (exc.value.name, exc.value.args) == (
        "EscrowInvalidSigner",
        (old.address, client.address),
    )


def test_open_takes_no_default_price_limits(deployment: Any, accounts: Any) -> None:
    d, client, provider = deployment, accounts.client, accounts.provider
    mid = list_eth_model(d, provider)
    with pytest.raises(TypeError, match="max_input_price_per_m"):
        d.escrow.open(client, provider.address, mid, DEPOSIT)  # type: ignore[call-arg]
    no_token = {"max_input_price_per_m": 1, "max_output_price_per_m": 1}
    with pytest.raises(TypeError, match="token"):
        d.escrow.open(client, provider.address, mid, DEPOSIT, **no_token)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match=r"max_output_price_per_m must be in \[0, "):
        d.escrow.open(
            client,
            provider.address,
            mid,
            DEPOSIT,
            token=ETH,
            max_input_price_per_m=1,
            max_output_price_per_m=-1,
        )
    unlimited = {
        "token": ETH,
        "max_input_price_per_m": 2**96 - 1,
        "max_output_price_per_m": 2**96 - 1,
    }
    cid = d.escrow.open(client, provider.address, mid, DEPOSIT, **unlimited).value
    assert d.escrow.get_channel(cid).prices == PRICES, "the snapshot is the listing, not the limit"


def test_a_mined_reverted_transaction_is_decoded(deployment: Any, accounts: Any) -> None:
    d = deployment
    cid = open_eth(d, accounts)
    forged = signed(d, accounts.other, cid, 10, 10)
    # An explicit gas limit skips estimate_gas, so the revert happens in a mined transaction.
    with pytest.raises(ContractError) as exc:
        d.escrow.claim(accounts.provider, forged, gas=300_000)
    assert (exc.value.name, exc.value.args) == (
        "EscrowInvalidSigner",
        (accounts.other.address, accounts.client.address),
    )
    assert d.escrow.get_channel(cid).paid == 0


def test_several_sends_in_a_row_from_threads(deployment: Any, accounts: Any) -> None:
    from concurrent.futures import ThreadPoolExecutor

    d = deployment
    cid = open_eth(d, accounts)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: d.escrow.top_up(accounts.client, cid, 1), range(8)))
    assert len({r.tx_hash for r in results}) == 8
    assert d.escrow.get_channel(cid).deposit == DEPOSIT + 8


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    input_price=st.integers(0, 2**96 - 1),
    output_price=st.integers(0, 2**88 - 1),  # the registry refuses larger output prices
    totals=st.lists(
        st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)), min_size=1, max_size=4
    ),
)
def test_cost_of_equals_the_contract(
    deployment: Any, accounts: Any, input_price: int, output_price: int, totals: list
) -> None:
    d, provider = deployment, accounts.provider
    prices = Prices(input_price, output_price)
    mid = list_eth_model(d, provider, "prop", prices)
    cid = d.escrow.open(accounts.client, provider.address, mid, 1, **limits(prices)).value
    assert d.escrow.get_channel(cid).prices == prices
    for i, o in [*totals, (0, 0), (2**64 - 1, 2**64 - 1), (1, 1)]:
        assert cost_of(i, o, prices) == d.escrow.cost_of(cid, i, o)


def test_batched_channel_reads_equal_one_read_each(deployment: Any, accounts: Any) -> None:
    d = deployment
    first = open_eth(d, accounts)
    before = int(d.escrow.w3.eth.block_number)
    second = open_eth(d, accounts, amount=2 * DEPOSIT)
    unknown = b"\x07" * 32
    ids = [first, second, unknown]
    assert d.escrow.get_channels(ids) == [d.escrow.get_channel(c) for c in ids]
    states = d.escrow.get_channels(ids, before)  # as of a block: the second not opened yet
    assert [s.status for s in states] == [
        ChannelStatus.OPEN,
        ChannelStatus.NONE,
        ChannelStatus.NONE,
    ]
    state = states[0]
    assert (state.model_id, state.session_key, state.prices) == (None, None, PRICES)
    assert str(state.status) == "open" and f"{state.status}" == "open"
    assert ChannelStatus.from_label("closing") == ChannelStatus.CLOSING
    opened = d.escrow.opened_models(accounts.provider.address)
    assert opened == {first: model_id(MODEL), second: model_id(MODEL)}


def test_listing_changes_name_the_models_listed_repriced_or_delisted(
    deployment: Any, accounts: Any
) -> None:
    d, provider = deployment, accounts.provider
    mid = list_eth_model(d, provider)
    start = int(d.escrow.w3.eth.block_number) + 1  # after the listing
    d.registry.set_price(provider, mid, Prices(1, 2))
    assert d.registry.listing_changes(provider.address, start) == {mid}
    other = list_eth_model(d, provider, name="other-model")
    assert d.registry.listing_changes(provider.address, start) == {mid, other}
    assert d.registry.listing_changes(accounts.client.address, start) == set()
