"""The bench's x402 "exact" baseline on a real anvil: eth-account signs, MockUSDC settles."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.chain

SSTORE_FRESH_SLOT = 22_100  # EIP-2929/2200: a cold zero-to-nonzero write, the random nonce's slot


@pytest.fixture
def chain(anvil: Any, w3: Any, accounts: Any, deployment: Any) -> Any:
    from tallystick.devnet import Market

    return Market(anvil.url, w3, deployment, accounts.deployer)


@pytest.fixture
def parties(chain: Any) -> tuple[Any, Any, Any]:
    """A payer holding USDC, a payee, and a facilitator that holds only gas money."""
    from tallystick.devnet import funded_account

    payer, payee, facilitator = (funded_account(chain.w3) for _ in range(3))
    chain.usdc.mint(payer, payer.address, 10**9)
    return payer, payee, facilitator


def _signed(chain: Any, payer: Any, signer: Any, to: str) -> tuple[dict[str, Any], Any]:
    from bench import gas_per_request as g

    authorization = g.x402_authorization(chain, payer, to, g.X402_PAYMENT)
    return authorization, signer.sign_message(g.x402_message(chain, authorization))


def _revert(chain: Any, facilitator: Any, authorization: dict[str, Any], signed: Any) -> Any:
    from tallystick.protocol import decode_revert
    from web3.exceptions import ContractCustomError

    from bench import gas_per_request as g

    call = g.x402_settle_call(chain, authorization, signed)
    with pytest.raises(ContractCustomError) as info:
        call.call({"from": facilitator.address})
    return decode_revert(bytes.fromhex(str(info.value.data)[2:]))


def test_the_signed_domain_is_the_tokens_domain_separator(chain: Any, parties: Any) -> None:
    from bench import gas_per_request as g

    payer, payee, _ = parties
    message = g.x402_message(chain, g.x402_authorization(chain, payer, payee.address, 1))
    assert message.header == bytes(chain.usdc.contract.functions.DOMAIN_SEPARATOR().call())


def test_x402_exact_pays_the_payee_and_spends_the_nonce(chain: Any, parties: Any) -> None:
    from bench import gas_per_request as g
    from bench._common import send_tx

    payer, payee, facilitator = parties
    authorization, signed = _signed(chain, payer, payer, payee.address)
    send_tx(chain.w3, facilitator, g.x402_settle_call(chain, authorization, signed))

    assert chain.usdc.balance_of(payee.address) == g.X402_PAYMENT
    assert chain.usdc.balance_of(facilitator.address) == 0
    state = chain.usdc.contract.functions.authorizationState(payer.address, authorization["nonce"])
    assert state.call() is True
    replay = _revert(chain, facilitator, authorization, signed)
    assert (replay.name, replay.args) == (
        "MockUSDCAuthorizationUsed",
        (payer.address, authorization["nonce"]),
    )


def test_x402_exact_rejects_an_authorization_signed_by_another_key(
    chain: Any, parties: Any
) -> None:
    from tallystick.devnet import funded_account

    payer, payee, facilitator = parties
    mallory = funded_account(chain.w3)
    authorization, signed = _signed(chain, payer, mallory, payee.address)
    error = _revert(chain, facilitator, authorization, signed)
    assert (error.name, error.args) == (
        "MockUSDCInvalidSigner",
        (mallory.address, payer.address),
    )


def test_x402_exact_costs_a_transfer_plus_a_fresh_nonce_slot(chain: Any) -> None:
    from bench import gas_per_request as g

    base = g.measure_baselines(chain, samples=3)
    assert base["x402_exact"] > base["erc20_transfer"] + SSTORE_FRESH_SLOT
    assert set(base) == set(g.BASELINES)
