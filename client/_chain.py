"""What the client reads from and sends to the chain, through ``tallystick.protocol`` bindings.

``Chain`` pairs the protocol's ``Registry`` and ``Escrow`` (typed reads, locally signed writes,
reverts decoded into ``ContractError``, an unreachable RPC as ``ChainUnavailable``) and adds
only what a client needs on top: listings joined with their provider's endpoint, and a
balance read that covers ETH as well as ERC-20 tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import requests
from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address
from tallystick.protocol import (
    ETH,
    ChainError,
    ChainUnavailable,
    ChannelState,
    ContractError,
    Domain,
    Escrow,
    FailoverHTTPProvider,
    Listing,
    Prices,
    Registry,
    SignedReceipt,
    Token,
    TxResult,
    connect,
    model_id,
    new_salt,
    read_deployment,
)
from web3 import Web3
from web3.exceptions import Web3RPCError

from ._errors import PriceChanged, TokenChanged

__all__ = ["Chain", "Offer"]


@dataclass(frozen=True)
class Offer(Listing):
    """A listing with the endpoint its provider's node answers at: what a client can buy."""

    endpoint: str = ""

    @property
    def model(self) -> str:
        return self.name

    @classmethod
    def of(cls, listing: Listing, endpoint: str) -> Offer:
        return cls(**{f.name: getattr(listing, f.name) for f in fields(Listing)}, endpoint=endpoint)


class Chain:
    """The registry and the escrow on one chain, seen by one client."""

    def __init__(self, w3: Web3, registry: str, escrow: str) -> None:
        self.w3 = w3
        self.registry = Registry(w3, registry)
        self.escrow = Escrow(w3, escrow)

    @classmethod
    def connect(
        cls,
        rpc_url: str | Sequence[str],
        registry: str | None = None,
        escrow: str | None = None,
        *,
        deployments: str | Path | None = None,
    ) -> Chain:
        """Connect over HTTP to one RPC URL or several (``"a,b"``: failover between them).

        The addresses come from ``registry``/``escrow``, or from ``deployments`` (the Hardhat
        Ignition deployments folder) for the RPC's chain id. ``ChainUnavailable`` when no URL
        answers, ``DeploymentNotFound`` when the folder has no deployment for that chain.
        """
        w3 = connect(rpc_url)
        if registry is None or escrow is None:
            if deployments is None:
                raise ValueError("pass the registry and escrow addresses, or deployments=")
            try:
                chain_id = int(w3.eth.chain_id)
            except (requests.RequestException, OSError) as exc:
                raise ChainUnavailable(f"chain RPC failed: {exc}") from exc
            found = read_deployment(deployments, chain_id)
            registry, escrow = registry or found.registry, escrow or found.escrow
        return cls(w3, registry, escrow)

    @property
    def chain_id(self) -> int:
        return self.domain.chain_id

    @property
    def domain(self) -> Domain:
        return self.escrow.domain

    # reads

    def providers(self) -> list[str]:
        return self.registry.providers()

    def offers(self, provider: str) -> list[Offer]:
        """Every model ``provider`` lists (active or not), with its endpoint."""
        endpoint = self.registry.get_provider(provider).endpoint
        return [Offer.of(x, endpoint) for x in self.registry.listings_of(provider)]

    def offer(self, provider: str, model: str) -> Offer:
        """``provider``'s listing of ``model``, with its endpoint."""
        endpoint = self.registry.get_provider(provider).endpoint
        return Offer.of(self.registry.get_listing(provider, model_id(model)), endpoint)

    def published_audits(self, providers: set[str]) -> dict[str, int]:
        """How many failed audits others published on-chain per provider (§10.7)."""
        counts: dict[str, int] = {}
        for event in self.registry.audit_reports():
            who = str(event.args["provider"])
            if who in providers:
                counts[who] = counts.get(who, 0) + 1
        return counts

    def rpc_failures(self) -> dict[tuple[str, str], int]:
        """Transport failures per (RPC URL label, kind) since connecting (failover counts)."""
        provider = self.w3.provider
        return dict(provider.failures) if isinstance(provider, FailoverHTTPProvider) else {}

    def channel(self, channel_id: bytes, confirmations: int = 0) -> ChannelState:
        """The channel ``confirmations`` blocks below the head (0: the head)."""
        if confirmations == 0:
            return self.escrow.get_channel(channel_id)
        try:
            head = int(self.w3.eth.block_number)
        except (requests.RequestException, OSError) as exc:
            raise ChainUnavailable(f"chain RPC failed: {exc}") from exc
        return self.escrow.get_channel(channel_id, max(head - confirmations, 0))

    def challenge_period(self) -> int:
        return self.escrow.challenge_period()

    def now(self) -> int:
        """The latest block's timestamp: the escrow's clock for ``closesAt``."""
        try:
            return int(self.w3.eth.get_block("latest")["timestamp"])
        except (requests.RequestException, Web3RPCError, ValueError) as exc:
            raise ChainUnavailable(f"cannot read the latest block: {exc}") from exc

    def token_balance(self, token: str, owner: str) -> int:
        if int(token, 16) != 0:
            return Token(self.w3, token).balance_of(owner)
        # The bindings have no ETH balance read; translate the transport error here.
        try:
            return int(self.w3.eth.get_balance(to_checksum_address(owner)))
        except (requests.RequestException, OSError) as exc:
            raise ChainUnavailable(f"chain RPC failed: {exc}") from exc

    # writes (``Escrow`` approves an ERC-20 before pulling it)

    def open_channel(
        self,
        account: LocalAccount,
        provider: str,
        model: str,
        amount: int,
        session_key: str = ETH,
        *,
        token: str,
        max_prices: Prices,
    ) -> tuple[bytes, TxResult]:
        """Open a channel paid in ``token`` at no more than ``max_prices``; return its id and tx.

        ``token`` and ``max_prices`` are what the client accepted: a listing changed before the
        transaction is mined makes the escrow refuse it, raised here as ``TokenChanged`` or
        ``PriceChanged``. An ERC-20 is approved for exactly ``amount`` just before, and the
        previous allowance restored if the open fails (the bindings' ``Escrow.open``).
        """
        salt = new_salt()
        mid = model_id(model)
        expected = self.escrow.channel_id(account.address, provider, mid, salt)
        try:
            tx = self.escrow.open(
                account,
                provider,
                mid,
                amount,
                session_key,
                token=token,
                max_input_price_per_m=max_prices.input_per_m,
                max_output_price_per_m=max_prices.output_per_m,
                salt=salt,
            )
        except ContractError as exc:
            if exc.name == "EscrowTokenMismatch":
                raise TokenChanged(provider, model, token, str(exc.args[0])) from exc
            if exc.name != "EscrowPriceAboveLimit":
                raise
            current = Prices(int(exc.args[0]), int(exc.args[1]))
            raise PriceChanged(provider, model, max_prices, current) from exc
        if bytes(tx.value) != expected:  # the escrow derives it as §2 says; anything else is a bug
            raise ChainError(f"the escrow opened 0x{bytes(tx.value).hex()}, not 0x{expected.hex()}")
        return expected, tx

    def top_up(self, account: LocalAccount, channel_id: bytes, amount: int) -> TxResult:
        return self.escrow.top_up(account, channel_id, amount)

    def authorize_session_key(
        self, account: LocalAccount, channel_id: bytes, session_key: str
    ) -> TxResult:
        return self.escrow.authorize_session_key(account, channel_id, session_key)

    def close_cooperative(
        self, account: LocalAccount, final: SignedReceipt, provider_sig: bytes
    ) -> TxResult:
        """``closeCooperative``; ``value`` is the client's refund."""
        return self.escrow.close_cooperative(account, final, provider_sig)

    def request_close(self, account: LocalAccount, channel_id: bytes) -> int:
        """``requestClose``; return ``closesAt``."""
        return int(self.escrow.request_close(account, channel_id).value)

    def finalize(self, account: LocalAccount, channel_id: bytes) -> TxResult:
        """``finalize``; ``value`` is the client's refund."""
        return self.escrow.finalize(account, channel_id)
