"""``ChainView`` on a real chain, through the protocol's web3 bindings.

web3 is synchronous, so every call runs in a worker thread (``asyncio.to_thread``); errors
arrive already translated into ``ChainError`` subclasses by the bindings.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import requests
from eth_abi import decode as abi_decode
from eth_account.signers.local import LocalAccount
from eth_typing import HexStr
from eth_utils import event_abi_to_log_topic, function_abi_to_4byte_selector, to_checksum_address
from eth_utils.abi import get_abi_output_types
from tallystick.protocol import (
    ChainUnavailable,
    ContractError,
    Domain,
    Escrow,
    FailoverHTTPProvider,
    Prices,
    Registry,
    SignedReceipt,
    Token,
    connect,
    load_artifact,
    read_deployment,
)
from web3 import HTTPProvider, Web3
from web3.exceptions import TransactionNotFound
from web3.providers.rpc.utils import ExceptionRetryConfiguration
from web3.types import RPCEndpoint

from ._chain import ClaimOutcome, CloseRequest, KeyRetirement, ListingInfo
from ._errors import ConfigError
from ._settings import Settings
from ._types import ZERO_ADDRESS, ChannelInfo, ChannelStatus

__all__ = ["EscrowChain", "connect_node", "resolve_addresses"]

log = logging.getLogger("tallystick.node.chain")

CHANNEL_BATCH = 200  # getChannel calls per JSON-RPC batch request
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
        self._listings: dict[bytes, tuple[float, ListingInfo | None]] = {}
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

    async def channel(self, channel_id: bytes) -> ChannelInfo | None:
        return await asyncio.to_thread(self._channel, channel_id)

    def _channel(self, channel_id: bytes) -> ChannelInfo | None:
        # Serving reads the channel ``confirmations`` blocks deep: an open or a top-up a
        # reorg could still drop is not there yet.
        state = self.escrow.get_channel(channel_id, self._final_block())
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

    def _final_block(self) -> int | str:
        if self.confirmations == 0:
            return "latest"
        head = _rpc(lambda: int(self.escrow.w3.eth.block_number))
        return max(head - self.confirmations, 0)

    async def read_channels(self, channel_ids: list[bytes]) -> dict[bytes, ChannelInfo | None]:
        return await asyncio.to_thread(self._read_channels, list(channel_ids))

    def _read_channels(self, channel_ids: list[bytes]) -> dict[bytes, ChannelInfo | None]:
        # A settlement pass reads every channel with a receipt: one JSON-RPC batch per
        # CHANNEL_BATCH getChannel calls, and the model ids of all our channels from one
        # log query, instead of two round trips per channel.
        self._learn_model_ids(channel_ids)
        out: dict[bytes, ChannelInfo | None] = {}
        for start in range(0, len(channel_ids), CHANNEL_BATCH):
            chunk = channel_ids[start : start + CHANNEL_BATCH]
            for cid, raw in zip(chunk, _rpc(lambda c=chunk: self._get_channels(c)), strict=True):
                out[cid] = self._info(cid, raw)
        return out

    def _get_channels(self, chunk: list[bytes]) -> list[Any]:
        # Raw eth_calls, encoded and decoded here: web3's per-call formatters cost ~1.5 ms
        # of Python per channel, more than anvil takes to answer the whole batch.
        selector, types = _GET_CHANNEL
        to = self.escrow.address
        calls = [
            (RPCEndpoint("eth_call"), [{"to": to, "data": "0x" + (selector + cid).hex()}, "latest"])
            for cid in chunk
        ]
        responses = self.escrow.w3.provider.make_batch_request(calls)
        if not isinstance(responses, list):  # the whole batch was refused
            raise ChainUnavailable(f"getChannel batch failed: {responses.get('error')}")
        out = []
        for response in responses:
            if "error" in response or "result" not in response:
                raise ChainUnavailable(f"getChannel failed: {response.get('error')}")
            out.append(abi_decode(types, bytes.fromhex(str(response["result"])[2:]))[0])
        return out

    def _info(self, channel_id: bytes, raw: Any) -> ChannelInfo | None:
        client, provider, token, status, pi, po, deposit, paid, i, o, closes_at, key = raw
        if int(status) == ChannelStatus.NONE:
            return None
        return ChannelInfo(
            channel_id=channel_id,
            client=to_checksum_address(client),
            provider=to_checksum_address(provider),
            token=to_checksum_address(token),
            status=ChannelStatus(int(status)),
            model_id=self._model_id(channel_id),
            prices=Prices(int(pi), int(po)),
            deposit=int(deposit),
            paid=int(paid),
            claimed_input=int(i),
            claimed_output=int(o),
            closes_at=int(closes_at),
            session_key=None if int(key, 16) == 0 else to_checksum_address(key),
        )

    def _learn_model_ids(self, channel_ids: list[bytes]) -> None:
        """Model ids of every channel opened with us since the last scan, in one log query."""
        if all(cid in self._model_ids for cid in channel_ids):
            return
        head = self.escrow.block_number()
        if head < self._opened_scan:
            return
        query = {
            "address": self.escrow.address,
            "fromBlock": self._opened_scan,
            "toBlock": head,
            "topics": [_CHANNEL_OPENED, None, None, _address_topic(self.provider)],
        }
        for log in _rpc(lambda: self.escrow.w3.eth.get_logs(query)):
            # channelId is the first indexed argument, modelId the first word of the data.
            self._model_ids[bytes(log["topics"][1])] = bytes(log["data"][:32])
        self._opened_scan = head + 1

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
        if cached:
            ttl = MISSING_LISTING_TTL_S if cached[1] is None else LISTING_TTL_S
            if time.monotonic() - cached[0] < ttl:
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
        logs = _rpc(
            lambda: self.registry.w3.eth.get_logs(
                {
                    "address": self.registry.address,
                    "fromBlock": from_block,
                    "toBlock": to_block,
                    "topics": [_listing_topics(self.registry), _address_topic(self.provider)],
                }
            )
        )
        for log in logs:
            self._listings.pop(bytes(log["topics"][2]), None)

    async def timestamp(self) -> int:
        return await asyncio.to_thread(
            _rpc, lambda: int(self.escrow.w3.eth.get_block("latest")["timestamp"])
        )


_LISTING_EVENTS = ("ModelListed", "PriceUpdated", "ModelDelisted")


def _get_channel_abi() -> tuple[bytes, list[str]]:
    abi = next(e for e in load_artifact("TallyEscrow")["abi"] if e.get("name") == "getChannel")
    return function_abi_to_4byte_selector(abi), get_abi_output_types(abi)


_GET_CHANNEL = _get_channel_abi()
_CHANNEL_OPENED = (
    "0x"
    + next(
        event_abi_to_log_topic(e)
        for e in load_artifact("TallyEscrow")["abi"]
        if e.get("type") == "event" and e["name"] == "ChannelOpened"
    ).hex()
)


def _listing_topics(registry: Registry) -> list[str]:
    events = [e for e in registry.contract.abi if e.get("type") == "event"]
    return ["0x" + event_abi_to_log_topic(e).hex() for e in events if e["name"] in _LISTING_EVENTS]


def _address_topic(address: str) -> str:
    return "0x" + "00" * 12 + address.lower().removeprefix("0x")


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
