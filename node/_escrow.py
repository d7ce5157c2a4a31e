"""``ChainView`` on a real chain, through the protocol's web3 bindings.

web3 is synchronous, so every call runs in a worker thread (``asyncio.to_thread``); errors
arrive already translated into ``ChainError`` subclasses by the bindings.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Any

import requests
from eth_account.signers.local import LocalAccount
from eth_typing import HexStr
from tallystick.protocol import (
    ChainUnavailable,
    ChannelState,
    ChannelStatus,
    ContractError,
    Domain,
    Escrow,
    FailoverHTTPProvider,
    Listing,
    Registry,
    SignedReceipt,
    Token,
    connect,
    read_deployment,
)
from web3 import HTTPProvider, Web3
from web3.exceptions import TransactionNotFound
from web3.providers.rpc.utils import ExceptionRetryConfiguration

from ._chain import ClaimOutcome, CloseRequest, KeyRetirement
from ._errors import ConfigError
from ._settings import Settings

__all__ = ["EscrowChain", "connect_node", "resolve_addresses"]

log = logging.getLogger("tallystick.node.chain")

LISTING_TTL_S = 30.0  # a listing we found; registry events drop it sooner (``_close_requests``)
MISSING_LISTING_TTL_S = 1.0  # a listing we did not find: it may be listed any moment


class EscrowChain:
    """The escrow and registry at the configured addresses, seen by this provider."""

    def __init__(
        self, escrow: Escrow, registry: Registry, account: LocalAccount, confirmations: int = 0
    ) -> None:
        self.escrow = escrow
        self.confirmations = confirmations
        self.registry = registry
        self._account = account
        self.provider: str = account.address
        self.domain: Domain = escrow.domain
        self._model_ids: dict[bytes, bytes] = {}  # channel -> modelId (immutable once opened)
        self._listings: dict[bytes, tuple[float, Listing | None]] = {}
        self._opened_scan = 0  # next block to scan for ChannelOpened events of ours

    @classmethod
    async def connect(cls, settings: Settings, account: LocalAccount) -> EscrowChain:
        """Connect and read the chain id; ``ChainUnavailable`` if the RPC does not answer."""

        def build() -> EscrowChain:
            w3 = connect_node(settings)
            found = resolve_addresses(settings, w3)
            escrow = Escrow(w3, found.escrow_address)
            registry = Registry(w3, found.registry_address)
            return cls(escrow, registry, account, settings.confirmations)

        return await asyncio.to_thread(build)

    async def check(self, settings: Settings) -> None:
        """``ConfigError`` unless both addresses hold the contracts and belong together."""
        await asyncio.to_thread(self._check, settings)

    def _check(self, settings: Settings) -> None:
        w3 = self.escrow.w3
        escrow, registry = self.escrow.address, self.registry.address
        for flag, address in (("--escrow", escrow), ("--registry", registry)):
            if not _rpc(lambda a=address: bytes(w3.eth.get_code(a))):
                raise ConfigError(f"{flag} {address}: no contract at this address on this chain")
        try:
            linked = self.escrow.registry.address
        except ContractError:
            raise ConfigError(f"--escrow {escrow} is not a TallyEscrow") from None
        if linked.lower() != registry.lower():
            raise ConfigError(f"--registry {registry} is not the escrow's registry ({linked})")

    def rpc_failures(self) -> dict[tuple[str, str], int]:
        """Transport failures per RPC URL label and kind, since start (for the metric)."""
        provider = self.escrow.w3.provider
        return dict(provider.failures) if isinstance(provider, FailoverHTTPProvider) else {}

    def rpc_errors(self) -> dict[tuple[str, str], int]:
        """JSON-RPC error answers per RPC URL label and error code, since start (the metric)."""
        provider = self.escrow.w3.provider
        return dict(provider.errors) if isinstance(provider, FailoverHTTPProvider) else {}

    async def channel(self, channel_id: bytes) -> ChannelState | None:
        return await asyncio.to_thread(self._channel, channel_id)

    def _channel(self, channel_id: bytes) -> ChannelState | None:
        # Serving reads the channel ``confirmations`` blocks deep: an open or a top-up a
        # reorg could still drop is not there yet.
        state = self.escrow.get_channel(channel_id, self._final_block())
        return self._with_model(state)

    def _with_model(self, state: ChannelState) -> ChannelState | None:
        if state.status == ChannelStatus.NONE:
            return None
        return replace(state, model_id=self._model_id(state.channel_id))

    def _final_block(self) -> int | str:
        if self.confirmations == 0:
            return "latest"
        head = _rpc(lambda: int(self.escrow.w3.eth.block_number))
        return max(head - self.confirmations, 0)

    async def read_channels(self, channel_ids: list[bytes]) -> dict[bytes, ChannelState | None]:
        return await asyncio.to_thread(self._read_channels, list(channel_ids))

    def _read_channels(self, channel_ids: list[bytes]) -> dict[bytes, ChannelState | None]:
        # A settlement pass reads every channel with a receipt: batched getChannel calls, and
        # the model ids of all our channels from one log query, instead of two round trips
        # per channel.
        self._learn_model_ids(channel_ids)
        states = _rpc(lambda: self.escrow.get_channels(channel_ids))
        return {s.channel_id: self._with_model(s) for s in states}

    def _learn_model_ids(self, channel_ids: list[bytes]) -> None:
        """Model ids of every channel opened with us since the last scan, in one log query."""
        if all(cid in self._model_ids for cid in channel_ids):
            return
        head = self.escrow.block_number()
        if head < self._opened_scan:
            return
        self._model_ids.update(self.escrow.opened_models(self.provider, self._opened_scan, head))
        self._opened_scan = head + 1

    def _model_id(self, channel_id: bytes) -> bytes:
        # ChannelView has no modelId; the ChannelOpened event does.
        if channel_id not in self._model_ids:
            events = self.escrow.channels_opened(channel_id=channel_id)
            if not events:
                raise ChainUnavailable(f"no ChannelOpened event for 0x{channel_id.hex()}")
            self._model_ids[channel_id] = bytes(events[0].args["modelId"])
        return self._model_ids[channel_id]

    async def listing(self, model_id: bytes) -> Listing | None:
        cached = self._listings.get(model_id)
        if cached:
            ttl = MISSING_LISTING_TTL_S if cached[1] is None else LISTING_TTL_S
            if time.monotonic() - cached[0] < ttl:
                return cached[1]
        info = await asyncio.to_thread(self._listing, model_id)
        self._listings[model_id] = (time.monotonic(), info)
        return info

    def _listing(self, model_id: bytes) -> Listing | None:
        try:
            listing = self.registry.get_listing(self.provider, model_id)
        except ContractError:
            return None
        if listing.context_length == 0:  # never listed: an all-zero struct
            return None
        return listing

    async def claim_cost_estimate(self, receipts: list[SignedReceipt]) -> int:
        def estimate() -> int:
            gas = self.escrow.estimate_claim_many_gas(self.provider, receipts)
            return gas * _rpc(lambda: int(self.escrow.w3.eth.gas_price))

        return await asyncio.to_thread(estimate)

    async def token_decimals(self, token: str) -> int:
        def read() -> int:
            return _rpc(lambda: Token(self.escrow.w3, token).decimals())

        return await asyncio.to_thread(read)

    async def claim_many(self, receipts: list[SignedReceipt]) -> ClaimOutcome:
        result = await asyncio.to_thread(self.escrow.claim_many, self._account, receipts)
        claimed: dict[bytes, int] = {}
        for event in result.events_named("ReceiptClaimed"):
            cid = bytes(event.args["channelId"])
            claimed[cid] = claimed.get(cid, 0) + int(event.args["amount"])
        skipped = {s.channel_id: str(s.reason) for s in result.skipped}
        return ClaimOutcome("0x" + result.tx_hash.hex(), result.gas_used, claimed, skipped)

    async def close_requests(self, from_block: int) -> tuple[list[CloseRequest], int]:
        return await asyncio.to_thread(self._close_requests, from_block)

    async def tx_confirmations(self, tx_hash: str) -> int | None:
        return await asyncio.to_thread(self._tx_confirmations, tx_hash)

    def _tx_confirmations(self, tx_hash: str) -> int | None:
        w3 = self.escrow.w3
        try:
            receipt = w3.eth.get_transaction_receipt(HexStr(tx_hash))
        except TransactionNotFound:
            return None
        except Exception as exc:  # transport: the caller retries on its next pass
            raise ChainUnavailable(f"chain RPC failed: {exc}") from exc
        head = _rpc(lambda: int(w3.eth.block_number))
        return head - int(receipt["blockNumber"]) + 1

    def _close_requests(self, from_block: int) -> tuple[list[CloseRequest], int]:
        head = self.escrow.block_number()
        if head < from_block:
            return [], from_block
        self._drop_changed_listings(from_block, head)
        out = []
        for event in self.escrow.close_requests(from_block, head):
            cid = bytes(event.args["channelId"])
            if self.escrow.get_channel(cid).provider == self.provider:
                out.append(CloseRequest(cid, int(event.args["closesAt"]), event.block_number))
        # With confirmations, the last blocks are scanned again next time: a reorg may have
        # put a CloseRequested into a block at a height already scanned (events repeat; the
        # cache applies them idempotently).
        return out, max(head + 1 - self.confirmations, from_block)

    async def key_retirements(self, from_block: int) -> tuple[list[KeyRetirement], int]:
        return await asyncio.to_thread(self._key_retirements, from_block)

    def _key_retirements(self, from_block: int) -> tuple[list[KeyRetirement], int]:
        head = self.escrow.block_number()
        if head < from_block:
            return [], from_block
        out = []
        for event in self.escrow.key_retirements(from_block, head):
            cid = bytes(event.args["channelId"])
            if self.escrow.get_channel(cid).provider == self.provider:
                key, until = str(event.args["sessionKey"]), int(event.args["validUntil"])
                out.append(KeyRetirement(cid, key, until, event.block_number))
        return out, head + 1

    def _drop_changed_listings(self, from_block: int, to_block: int) -> None:
        # One eth_getLogs for ModelListed/PriceUpdated/ModelDelisted of this provider, so
        # /v1/models shows a new price within a poll interval, not after the 30 s TTL.
        if not self._listings:
            return
        for changed in self.registry.listing_changes(self.provider, from_block, to_block):
            self._listings.pop(changed, None)

    async def timestamp(self) -> int:
        return await asyncio.to_thread(
            _rpc, lambda: int(self.escrow.w3.eth.get_block("latest")["timestamp"])
        )


def connect_node(settings: Settings) -> Web3:
    """The node's Web3: ``rpc_timeout`` per request, and no retry of a timed-out call.

    web3 retries idempotent calls 5 times on a timeout: on a black-holed RPC one read would
    block its thread for 5 x the timeout. The worker retries on its own capped backoff and the
    serving path falls back to cached channel state, so a timeout is reported at once; HTTP
    errors (a hosted RPC's 429 or 502) still get web3's quick retries.
    """
    w3 = connect(settings.rpc, settings.rpc_timeout, on_failure=_log_failure)
    provider = w3.provider
    if isinstance(provider, HTTPProvider):
        provider.exception_retry_configuration = ExceptionRetryConfiguration(
            errors=(requests.HTTPError,)
        )
    return w3


def resolve_addresses(settings: Settings, w3: Web3) -> Settings:
    """``settings`` with the escrow and registry filled in from ``deployments`` for the RPC's
    chain id (addresses given explicitly win)."""
    if settings.escrow is not None and settings.registry is not None:
        return settings
    assert settings.deployments is not None  # Settings refuses neither addresses nor folder
    chain_id = _rpc(lambda: int(w3.eth.chain_id))
    found = read_deployment(settings.deployments, chain_id)
    update = {"escrow": settings.escrow or found.escrow}
    update["registry"] = settings.registry or found.registry
    return settings.model_copy(update=update)


def _log_failure(label: str, kind: str, exc: BaseException) -> None:
    log.warning("chain RPC %s failed (%s): %s; trying the next URL", label, kind, exc)


def _rpc(call: Any) -> Any:
    try:
        return call()
    except (OSError, ValueError) as exc:
        raise ChainUnavailable(f"chain RPC failed: {exc}") from exc
    except Exception as exc:  # requests' errors subclass OSError; anything else is transport too
        raise ChainUnavailable(f"chain RPC failed: {exc}") from exc
