"""Deploying the contracts from the checked-in artefacts (local chains, tests, demos)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import Web3

from ._abi import load_artifact
from ._bindings import Escrow, Registry, Token, transact


@dataclass(frozen=True)
class Deployment:
    """The three contracts of a local deployment."""

    registry: Registry
    escrow: Escrow
    usdc: Token
    block_number: int

    def addresses(self) -> dict[str, str]:
        """``{"registry", "escrow", "usdc"}`` addresses, e.g. for a config file."""
        return {
            "registry": self.registry.address,
            "escrow": self.escrow.address,
            "usdc": self.usdc.address,
        }


def deploy_contract(w3: Web3, account: LocalAccount, name: str, *args: Any) -> str:
    """Deploy artefact ``name`` with constructor ``args``; returns its address."""
    artifact = load_artifact(name)
    if artifact["bytecode"] in ("", "0x"):
        raise ValueError(f"artefact {name} has no bytecode")
    factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    result = transact(w3, account, factory.constructor(*args))
    return str(result.receipt["contractAddress"])


def deploy(w3: Web3, account: LocalAccount, challenge_period: int = 3600) -> Deployment:
    """Deploy ProviderRegistry, TallyEscrow(registry, challengePeriod) and MockUSDC."""
    registry = deploy_contract(w3, account, "ProviderRegistry")
    escrow = deploy_contract(w3, account, "TallyEscrow", registry, challenge_period)
    usdc = deploy_contract(w3, account, "MockUSDC")
    return Deployment(
        registry=Registry(w3, registry),
        escrow=Escrow(w3, escrow),
        usdc=Token(w3, usdc),
        block_number=int(w3.eth.block_number),
    )
