"""Attacks on the escrow through the real stack (Python bindings -> anvil): each is refused with
its exact custom error and moves nothing (escrow balance, earnings, channel state unchanged).

Guarantee 1 of DESIGN.md: nobody moves funds with a signature made for another channel, chain
or contract; a client never pays for more than it countersigned; never twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tallystick.protocol import (
    ETH,
    ContractError,
    Domain,
    Escrow,
    Receipt,
    SignedReceipt,
    Token,
    connect,
    cost_of,
    deploy,
    model_id,
    new_salt,
    sign_receipt,
)
from tallystick.protocol._bindings import transact

from tests.kit.chain import MODEL, PRICES, start_anvil

pytestmark = pytest.mark.chain


DEPOSIT = 10**15
ROOT = b"\x42" * 32
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
# The client's price limits at open: the listed prices it was quoted.
LIMITS = {
    "token": ETH,
    "max_input_price_per_m": PRICES.input_per_m,
    "max_output_price_per_m": PRICES.output_per_m,
}


@dataclass(frozen=True)
class Snapshot:
    """Everything an attack could move."""

    escrow_eth: int
    earnings: int
    channels: tuple[Any, ...]


def snapshot(market: Any, *channel_ids: bytes) -> Snapshot:
    w3, escrow = market.w3, market.escrow
    return Snapshot(
        int(w3.eth.get_balance(escrow.address)),
        market.earnings(),
        tuple(escrow.get_channel(cid) for cid in channel_ids),
    )


def refused(name: str, call: Any) -> ContractError:
    with pytest.raises(ContractError) as caught:
        call()
    assert caught.value.name == name, str(caught.value)
    return caught.value


def _open(market: Any, account: Any, salt: bytes | None = None) -> bytes:
    provider = market.accounts.provider.address
    result = market.escrow.open(account, provider, model_id(MODEL), DEPOSIT, **LIMITS, salt=salt)
    return bytes(result.value)


def _receipt(cid: bytes, i: int, o: int) -> Receipt:
    return Receipt(cid, i, o, ROOT)


@pytest.fixture
def channels(market: Any) -> tuple[bytes, bytes]:
    """Two channels of ``accounts.client`` with the provider."""
    return _open(market, market.accounts.client), _open(market, market.accounts.client)


def test_a_receipt_signed_for_one_channel_does_not_pay_on_another(
    market: Any, channels: tuple[bytes, bytes]
) -> None:
    a, b = channels
    client, provider = market.accounts.client, market.accounts.provider
    domain = market.escrow.domain
    good = sign_receipt(client, domain, _receipt(a, 1000, 1000))
    replayed = SignedReceipt(_receipt(b, 1000, 1000), good.signature)
    before = snapshot(market, a, b)
    err = refused("EscrowInvalidSigner", lambda: market.escrow.claim(provider, replayed))
    assert err.args[1] == client.address  # the recovered signer is someone else
    assert snapshot(market, a, b) == before
    # The genuine receipt still pays, exactly its cost.
    assert market.escrow.claim(provider, good).value == cost_of(1000, 1000, PRICES)


def test_a_receipt_signed_for_another_escrow_does_not_pay(
    market: Any, channels: tuple[bytes, bytes]
) -> None:
    a, _ = channels
    client, provider = market.accounts.client, market.accounts.provider
    second = deploy(market.w3, market.accounts.deployer, challenge_period=3600)
    foreign = sign_receipt(client, second.escrow.domain, _receipt(a, 1000, 1000))
    before = snapshot(market, a)
    refused("EscrowInvalidSigner", lambda: market.escrow.claim(provider, foreign))
    assert snapshot(market, a) == before


def test_a_receipt_signed_for_another_chain_does_not_pay(market: Any, other_chain: Any) -> None:
    """Same contracts at the same addresses and the same channel id on a second chain."""
    accounts = market.accounts
    w3b, escrow_b = other_chain
    registry_b = escrow_b.registry
    registry_b.register(accounts.provider, "http://127.0.0.1:1")
    registry_b.list_model(
        accounts.provider, MODEL, PRICES, tokenizer_hash=b"\x11" * 32, context_length=2048
    )
    salt = new_salt()  # the client opens with the same salt on both chains
    cid_b = bytes(
        escrow_b.open(
            accounts.client,
            accounts.provider.address,
            model_id(MODEL),
            DEPOSIT,
            **LIMITS,
            salt=salt,
        ).value
    )
    a = _open(market, accounts.client, salt)
    assert escrow_b.address == market.escrow.address and cid_b == a  # identical but for chainId
    signed_here = sign_receipt(accounts.client, market.escrow.domain, _receipt(a, 1000, 1000))
    before_b = (int(w3b.eth.get_balance(escrow_b.address)), escrow_b.get_channel(cid_b))
    refused("EscrowInvalidSigner", lambda: escrow_b.claim(accounts.provider, signed_here))
    assert (int(w3b.eth.get_balance(escrow_b.address)), escrow_b.get_channel(cid_b)) == before_b
    # Signed for the other chain's domain, it pays there (the domain is the only difference).
    signed_there = sign_receipt(accounts.client, escrow_b.domain, _receipt(a, 1000, 1000))
    assert escrow_b.claim(accounts.provider, signed_there).value == cost_of(1000, 1000, PRICES)


def test_forged_and_malformed_signatures_are_refused(
    market: Any, channels: tuple[bytes, bytes]
) -> None:
    a, _ = channels
    accounts, escrow = market.accounts, market.escrow
    receipt = _receipt(a, 1000, 1000)
    before = snapshot(market, a)
    forged = sign_receipt(accounts.other, escrow.domain, receipt)
    err = refused("EscrowInvalidSigner", lambda: escrow.claim(accounts.provider, forged))
    assert err.args == (accounts.other.address, accounts.client.address)
    by_provider = sign_receipt(accounts.provider, escrow.domain, receipt)
    refused("EscrowInvalidSigner", lambda: escrow.claim(accounts.provider, by_provider))

    good = sign_receipt(accounts.client, escrow.domain, receipt).signature
    r, s, v = good[:32], int.from_bytes(good[32:64], "big"), good[64]
    high_s = r + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - v])  # the malleated twin
    for sig in (high_s, b"\x00" * 65, good[:64], good + b"\x00", r + good[32:64] + b"\x05"):
        fn = escrow.contract.functions.claim(receipt.as_tuple(), sig)
        err = refused(
            "EscrowInvalidSignature", lambda fn=fn: transact(market.w3, accounts.provider, fn)
        )
        assert err.args == (a,)
    assert snapshot(market, a) == before


def test_lower_or_equal_totals_do_not_pay_again(market: Any, channels: tuple[bytes, bytes]) -> None:
    a, _ = channels
    accounts, escrow = market.accounts, market.escrow
    sign = lambda i, o: sign_receipt(accounts.client, escrow.domain, _receipt(a, i, o))  # noqa: E731
    escrow.claim(accounts.provider, sign(1000, 1000))
    before = snapshot(market, a)
    err = refused("EscrowTotalsDecreased", lambda: escrow.claim(accounts.provider, sign(900, 1100)))
    assert err.args == (900, 1100, 1000, 1000)
    refused("EscrowReceiptNotNewer", lambda: escrow.claim(accounts.provider, sign(1000, 1000)))
    assert snapshot(market, a) == before
    # In a batch the bad receipts are skipped with their reason; the good one pays.
    batch = [sign(999, 2000), sign(1000, 1000), sign(1500, 1500)]
    result = escrow.claim_many(accounts.provider, batch)
    assert [s.reason.name for s in result.skipped] == [
        "EscrowTotalsDecreased",
        "EscrowReceiptNotNewer",
    ]
    assert result.value == cost_of(1500, 1500, PRICES) - cost_of(1000, 1000, PRICES)


def test_a_claim_after_finalize_is_refused(
    market: Any, channels: tuple[bytes, bytes], advance_time: Any
) -> None:
    a, _ = channels
    accounts, escrow = market.accounts, market.escrow
    late = sign_receipt(accounts.client, escrow.domain, _receipt(a, 1000, 1000))
    closes_at = escrow.request_close(accounts.client, a).value
    advance_time(escrow.challenge_period())
    refused("EscrowChallengeExpired", lambda: escrow.claim(accounts.provider, late))
    assert escrow.finalize(accounts.client, a).value == DEPOSIT
    before = snapshot(market, a)
    err = refused("EscrowChannelClosed", lambda: escrow.claim(accounts.provider, late))
    assert err.args == (a,)
    refused("EscrowChannelClosed", lambda: escrow.finalize(accounts.client, a))
    assert snapshot(market, a) == before and closes_at > 0


def test_a_session_key_pays_only_on_its_own_channel(
    market: Any, channels: tuple[bytes, bytes], advance_time: Any
) -> None:
    a, b = channels
    accounts, escrow = market.accounts, market.escrow
    session = accounts[8]
    escrow.authorize_session_key(accounts.client, a, session.address)
    outside = sign_receipt(session, escrow.domain, _receipt(b, 1000, 1000))
    before = snapshot(market, a, b)
    err = refused("EscrowInvalidSigner", lambda: escrow.claim(accounts.provider, outside))
    assert err.args == (session.address, accounts.client.address)
    assert snapshot(market, a, b) == before
    inside = sign_receipt(session, escrow.domain, _receipt(a, 1000, 1000))
    assert escrow.claim(accounts.provider, inside).value == cost_of(1000, 1000, PRICES)
    escrow.authorize_session_key(accounts.client, a, "0x" + "00" * 20)  # revoked
    after_grace = sign_receipt(session, escrow.domain, _receipt(a, 2000, 2000))
    advance_time(escrow.challenge_period())  # §7.3: a revoked key pays one challenge period more
    refused("EscrowInvalidSigner", lambda: escrow.claim(accounts.provider, after_grace))


def test_a_client_cannot_jam_the_providers_claims_with_its_own_receipt(
    market: Any, channels: tuple[bytes, bytes], advance_time: Any
) -> None:
    """Issue 10, hole 1: claimed (1000, 500), countersigned (6000, 50500); the client claims
    (6001, 500) itself and closes. Refused: only the provider moves the claimed totals."""
    a, _ = channels
    accounts, escrow = market.accounts, market.escrow
    sign = lambda i, o: sign_receipt(accounts.client, escrow.domain, _receipt(a, i, o))  # noqa: E731
    escrow.claim(accounts.provider, sign(1000, 500))
    owed, jam = sign(6000, 50_500), sign(6001, 500)
    before = snapshot(market, a)
    for caller in (accounts.client, accounts.other):
        err = refused("EscrowNotProvider", lambda c=caller: escrow.claim(c, jam))
        assert err.args == (caller.address, accounts.provider.address)
    assert [s.reason.name for s in escrow.claim_many(accounts.client, [jam]).skipped] == [
        "EscrowNotProvider"
    ]
    assert snapshot(market, a) == before
    escrow.request_close(accounts.client, a)
    paid = escrow.claim(accounts.provider, owed).value
    assert paid == cost_of(6000, 50_500, PRICES) - cost_of(1000, 500, PRICES)
    advance_time(escrow.challenge_period())
    assert escrow.finalize(accounts.client, a).value == DEPOSIT - cost_of(6000, 50_500, PRICES)


def test_a_captured_final_receipt_does_not_let_a_stranger_close(
    market: Any, channels: tuple[bytes, bytes]
) -> None:
    """A final receipt and the provider's signature seen in transit close nothing for others."""
    a, _ = channels
    accounts, escrow = market.accounts, market.escrow
    final = sign_receipt(accounts.client, escrow.domain, _receipt(a, 1000, 1000))
    provider_sig = sign_receipt(accounts.provider, escrow.domain, final.receipt).signature
    before = snapshot(market, a)
    err = refused(
        "EscrowNotParty", lambda: escrow.close_cooperative(accounts.other, final, provider_sig)
    )
    assert err.args == (accounts.other.address, accounts.client.address, accounts.provider.address)
    assert snapshot(market, a) == before


def test_revoking_a_session_key_does_not_void_what_it_countersigned(
    market: Any, channels: tuple[bytes, bytes], advance_time: Any
) -> None:
    """Issue 10, hole 2: the key countersigns (40000, 20000), the client revokes it and closes."""
    a, _ = channels
    accounts, escrow = market.accounts, market.escrow
    session = accounts[8]
    escrow.authorize_session_key(accounts.client, a, session.address)
    owed = sign_receipt(session, escrow.domain, _receipt(a, 40_000, 20_000))
    escrow.authorize_session_key(accounts.client, a, ETH)
    escrow.request_close(accounts.client, a)
    assert escrow.claim(accounts.provider, owed).value == cost_of(40_000, 20_000, PRICES)
    advance_time(escrow.challenge_period())
    assert escrow.finalize(accounts.client, a).value == DEPOSIT - cost_of(40_000, 20_000, PRICES)


def test_a_reentrant_token_cannot_withdraw_twice(market: Any) -> None:
    """ReentrantToken calls back into the escrow from inside the escrow's own transfer."""
    accounts, w3, escrow = market.accounts, market.w3, market.escrow
    evil = Token(w3, _deploy_test_only(w3, accounts.deployer, "ReentrantToken"))
    evil_functions = w3.eth.contract(address=evil.address, abi=_test_only_abi("ReentrantToken")[0])
    transact(w3, accounts.deployer, evil.contract.functions.mint(accounts.client.address, 10**12))
    market.registry.list_model(
        accounts.provider, "evil-model", PRICES, token=evil.address,
        tokenizer_hash=b"\x11" * 32, context_length=2048,
    )  # fmt: skip
    cid = bytes(
        escrow.open(
            accounts.client,
            accounts.provider.address,
            model_id("evil-model"),
            10**9,
            **LIMITS | {"token": evil.address},
        ).value
    )
    escrow.claim(
        accounts.provider, sign_receipt(accounts.client, escrow.domain, _receipt(cid, 1000, 1000))
    )
    earned = escrow.earnings(accounts.provider.address, evil.address)
    assert earned == cost_of(1000, 1000, PRICES)

    again = escrow.contract.functions.withdraw(evil.address, accounts.provider.address)
    data = again._encode_transaction_data()
    transact(w3, accounts.deployer, evil_functions.functions.arm(escrow.address, data))
    escrow.withdraw(accounts.provider, evil.address)
    functions = evil_functions.functions
    assert functions.attempted().call() and not functions.reentrySucceeded().call()
    reason = bytes(functions.reentryResult().call())
    assert reason[:4] == bytes.fromhex("3ee5aeb5")  # ReentrancyGuardReentrantCall()
    assert evil.balance_of(accounts.provider.address) == earned  # paid once
    assert evil.balance_of(escrow.address) == 10**9 - earned
    assert escrow.earnings(accounts.provider.address, evil.address) == 0


@pytest.fixture
def other_chain(anvil: Any, accounts: Any, market: Any) -> Iterator[tuple[Any, Escrow]]:
    """A second anvil (chain id 31338) with the same deployer: same contract addresses."""
    with start_anvil(31338, anvil.mnemonic) as other:
        w3b = connect(other.url)
        assert int(w3b.eth.chain_id) == 31338
        d = deploy(w3b, accounts.deployer, challenge_period=3600)
        assert d.escrow.address == market.escrow.address, "deployer nonces differ between chains"
        assert d.escrow.domain == Domain(31338, market.escrow.address)
        yield w3b, d.escrow


def _test_only_abi(name: str) -> tuple[list[Any], str]:
    # Test-only mocks are exported to tests/abi/, not shipped in protocol/abi/ (the wheel).
    artifact = json.loads(
        (Path(__file__).resolve().parents[1] / "abi" / f"{name}.json").read_text()
    )
    return artifact["abi"], artifact["bytecode"]


def _deploy_test_only(w3: Any, account: Any, name: str) -> str:
    abi, bytecode = _test_only_abi(name)
    factory = w3.eth.contract(abi=abi, bytecode=bytecode)
    return str(transact(w3, account, factory.constructor()).receipt["contractAddress"])
