"""The market on a devnet: contracts deployed, accounts funded, a provider registered and listed.

    procs = Processes()
    chain = start_anvil(procs)
    market = deploy_market(connect(chain.url), dev_account())
    provider = funded_account(market.w3)
    register_provider(market.deployment, provider, endpoint)
    list_model(market.deployment, provider, MODEL_NAME, prices,
               tokenizer_hash=served_tokenizer_hash(endpoint, MODEL_NAME), context_length=8192)

The functions take the protocol's ``Deployment`` (a ``Market`` carries one), so a test's
session deployment works as well as a fresh one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from eth_account import Account
from eth_account.signers.local import LocalAccount
from tallystick.protocol import (
    Deployment,
    Escrow,
    Prices,
    Registry,
    Token,
    TokenizerBundle,
    connect,
    deploy,
    model_hash,
)
from web3 import Web3

from ._processes import MNEMONIC, DevnetError

__all__ = [
    "Market",
    "deploy_market",
    "dev_account",
    "funded_account",
    "gguf_context_length",
    "list_model",
    "register_provider",
    "send_eth",
    "served_tokenizer_hash",
]


@dataclass(frozen=True)
class Market:
    """A deployed market on a chain: the contracts and the deployer that paid for them."""

    rpc: str
    w3: Web3
    deployment: Deployment
    deployer: LocalAccount

    @property
    def registry(self) -> Registry:
        return self.deployment.registry

    @property
    def escrow(self) -> Escrow:
        return self.deployment.escrow

    @property
    def usdc(self) -> Token:
        return self.deployment.usdc


def dev_account(index: int = 0, mnemonic: str = MNEMONIC) -> LocalAccount:
    """anvil's (and hardhat's) dev account ``index``: funded on a fresh devnet."""
    Account.enable_unaudited_hdwallet_features()
    return Account.from_mnemonic(mnemonic, account_path=f"m/44'/60'/0'/0/{index}")


def deploy_market(
    rpc: str,
    deployer: LocalAccount | None = None,
    *,
    w3: Web3 | None = None,
    challenge_period: int = 3600,
) -> Market:
    """Deploy ProviderRegistry, TallyEscrow(challenge_period) and MockUSDC on the chain at ``rpc``.

    ``deployer`` pays (default: a fresh account funded with ``anvil_setBalance``).
    """
    w3 = w3 or connect(rpc)
    deployer = deployer or funded_account(w3)
    return Market(rpc, w3, deploy(w3, deployer, challenge_period=challenge_period), deployer)


def funded_account(w3: Web3, wei: int = 10**24) -> LocalAccount:
    """A fresh key holding ``wei`` (anvil_setBalance: anvil and hardhat only, no transaction)."""
    account: LocalAccount = Account.create()
    w3.provider.make_request("anvil_setBalance", [account.address, hex(wei)])  # type: ignore[arg-type]
    return account


def send_eth(w3: Web3, sender: LocalAccount, to: str, value: int) -> None:
    """A plain ETH transfer (works on any chain; shows in the block as a transaction)."""
    tx: dict[str, Any] = {
        "to": to,
        "value": value,
        "gas": 21_000,
        "gasPrice": w3.eth.gas_price,
        "nonce": w3.eth.get_transaction_count(sender.address, "pending"),
        "chainId": w3.eth.chain_id,
    }
    signed = sender.sign_transaction(tx)
    receipt = w3.eth.wait_for_transaction_receipt(
        w3.eth.send_raw_transaction(signed.raw_transaction), timeout=120, poll_latency=0.05
    )
    if receipt["status"] != 1:
        raise DevnetError(f"funding {to} with ETH failed")


def register_provider(
    deployment: Deployment, provider: LocalAccount, endpoint: str, metadata: str = ""
) -> None:
    """``ProviderRegistry.register``: ``provider`` serves at ``endpoint``."""
    deployment.registry.register(provider, endpoint, metadata)


def list_model(
    deployment: Deployment,
    provider: LocalAccount,
    model: str,
    prices: Prices,
    *,
    tokenizer_hash: bytes,
    context_length: int,
    token: str | None = None,
    weights: Path | None = None,
) -> bytes:
    """``listModel`` priced in ``token`` (default ETH) and, given the GGUF ``weights``,
    ``setModelHash``; returns the model id."""
    result = deployment.registry.list_model(
        provider,
        model,
        prices,
        **({"token": token} if token else {}),
        tokenizer_hash=tokenizer_hash,
        context_length=context_length,
    )
    model_id = bytes(result.value)
    if weights is not None:  # the listing commits to the weights (protocol §10.1)
        deployment.registry.set_model_hash(provider, model_id, model_hash(weights))
    return model_id


def served_tokenizer_hash(endpoint: str, model: str) -> bytes:
    """The hash of the tokenizer bundle exactly as the node serves it: what clients recompute.

    Asks ``/v1/tally/tokenizer/<model>``, not ``/v1/models``: the node caches "not listed" for
    a while, and asking before the listing exists would make it advertise no prices.
    """
    url = f"{endpoint}/v1/tally/tokenizer/{model}"
    try:
        raw = httpx.get(url, timeout=30).raise_for_status().content
    except httpx.HTTPError as exc:
        raise DevnetError(f"the node at {endpoint} did not serve its tokenizer: {exc}") from exc
    return TokenizerBundle.from_bytes(raw).hash()


def gguf_context_length(path: Path) -> int:
    """``<arch>.context_length`` of a GGUF: what transformers makes max_position_embeddings."""
    from gguf import GGUFReader  # node-only dependency: imported when asked for

    try:
        fields = GGUFReader(str(path)).fields
    except (OSError, ValueError) as exc:
        raise DevnetError(f"{path} is not a readable GGUF file: {exc}") from exc
    for name, f in fields.items():
        if name.endswith(".context_length"):
            return int(f.parts[f.data[0]][0])
    raise DevnetError(f"{path} has no context_length in its GGUF metadata")
