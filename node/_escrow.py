"""``ChainView`` on a real chain, through the protocol's web3 bindings.

web3 is synchronous, so every call runs in a worker thread (``asyncio.to_thread``); errors
arrive already translated into ``ChainError`` subclasses by the bindings.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from eth_account.signers.local import LocalAccount
from tallystick.protocol import (
    ChainUnavailable,
    ContractError,
    Domain,
    Escrow,
    Registry,
    SignedReceipt,
    connect,
)

from ._chain import ClaimOutcome, CloseRequest, ListingInfo
from ._errors import ConfigError
from ._settings import Settings
from ._types import ZERO_ADDRESS, ChannelInfo, ChannelStatus

__all__ = ["EscrowChain"]

LISTING_TTL_S = 30.0


class EscrowChain:
    """The escrow and registry at the configured addresses, seen by this provider."""

    def __init__(self, escrow: Escrow, registry: Registry, account: LocalAccount) -> None:
        self.escrow = escrow
        self.registry = registry
        self._account = account
        self.provider: str = account.address
        self.domain: Domain = escrow.domain
        self._model_ids: dict[bytes, bytes] = {}  # channel -> modelId (immutable once opened)
        self._listings: dict[bytes, tuple[float, ListingInfo | None]] = {}

    @classmethod
    async def connect(cls, settings: Settings, account: LocalAccount) -> EscrowChain:
        """Connect and read the chain id; ``ChainUnavailable`` if the RPC does not answer."""

        def build() -> EscrowChain:
            w3 = connect(settings.rpc)
            return cls(Escrow(w3, settings.escrow), Registry(w3, settings.registry), account)

        return await asyncio.to_thread(build)

    async def check(self, settings: Settings) -> None:
        """``ConfigError`` unless both addresses hold the contracts and belong together."""
        await asyncio.to_thread(self._check, settings)

    def _check(self, settings: Settings) -> None:
        w3 = self.escrow.w3
        for flag, address in (("--escrow", settings.escrow), ("--registry", settings.registry)):
            if not _rpc(lambda a=address: bytes(w3.eth.get_code(a))):
                raise ConfigError(f"{flag} {address}: no contract at this address on this chain")
        try:
            linked = self.escrow.registry.address
        except ContractError:
            raise ConfigError(f"--escrow {settings.escrow} is not a TallyEscrow") from None
        if linked.lower() != settings.registry.lower():
            raise ConfigError(
                f"--registry {settings.registry} is not the escrow's registry ({linked})"
            )

    async def channel(self, channel_id: bytes) -> ChannelInfo | None:
        return await asyncio.to_thread(self._channel, channel_id)

    def _channel(self, channel_id: bytes) -> ChannelInfo | None:
        state = self.escrow.get_channel(channel_id)
        if int(state.status) == ChannelStatus.NONE:
            return None
        return ChannelInfo(
            channel_id=channel_id,
            client=state.client,
            provider=state.provider,
            token=state.token,
            status=ChannelStatus(int(state.status)),
            model_id=self._model_id(channel_id),
            prices=state.prices,
            deposit=state.deposit,
            paid=state.paid,
            claimed_input=state.input_tokens,
            claimed_output=state.output_tokens,
            closes_at=state.closes_at,
            session_key=None if state.session_key == ZERO_ADDRESS else state.session_key,
        )

    def _model_id(self, channel_id: bytes) -> bytes:
        # ChannelView has no modelId; the ChannelOpened event does.
        if channel_id not in self._model_ids:
            events = self.escrow.channels_opened(channel_id=channel_id)
            if not events:
                raise ChainUnavailable(f"no ChannelOpened event for 0x{channel_id.hex()}")
            self._model_ids[channel_id] = bytes(events[0].args["modelId"])
        return self._model_ids[channel_id]

    async def listing(self, model_id: bytes) -> ListingInfo | None:
        cached = self._listings.get(model_id)
        if cached and time.monotonic() - cached[0] < LISTING_TTL_S:
            return cached[1]
        info = await asyncio.to_thread(self._listing, model_id)
        self._listings[model_id] = (time.monotonic(), info)
        return info

    def _listing(self, model_id: bytes) -> ListingInfo | None:
        try:
            listing = self.registry.get_listing(self.provider, model_id)
        except ContractError:
            return None
        if listing.context_length == 0:  # never listed: an all-zero struct
            return None
        return ListingInfo(
            listing.input_price_per_m,
            listing.output_price_per_m,
            listing.token,
            listing.tokenizer_hash,
            listing.context_length,
            listing.active,
        )

    async def claim_cost_estimate(self, receipts: list[SignedReceipt]) -> int:
        def estimate() -> int:
            gas = self.escrow.estimate_claim_many_gas(self.provider, receipts)
            return gas * _rpc(lambda: int(self.escrow.w3.eth.gas_price))

        return await asyncio.to_thread(estimate)

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

    def _close_requests(self, from_block: int) -> tuple[list[CloseRequest], int]:
        head = self.escrow.block_number()
        if head < from_block:
            return [], from_block
        out = []
        for event in self.escrow.close_requests(from_block, head):
            cid = bytes(event.args["channelId"])
            if self.escrow.get_channel(cid).provider == self.provider:
                out.append(CloseRequest(cid, int(event.args["closesAt"]), event.block_number))
        return out, head + 1

    async def timestamp(self) -> int:
        return await asyncio.to_thread(
            _rpc, lambda: int(self.escrow.w3.eth.get_block("latest")["timestamp"])
        )


def _rpc(call: Any) -> Any:
    try:
        return call()
    except (OSError, ValueError) as exc:
        raise ChainUnavailable(f"chain RPC failed: {exc}") from exc
    except Exception as exc:  # requests' errors subclass OSError; anything else is transport too
        raise ChainUnavailable(f"chain RPC failed: {exc}") from exc
