"""``TallyEscrow``: channels, claims, closes, withdrawals and the events behind them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from typing import Any

from eth_abi import decode as abi_decode
from eth_account.signers.local import LocalAccount
from eth_utils import function_abi_to_4byte_selector
from eth_utils.abi import get_abi_output_types
from web3 import Web3
from web3.types import RPCEndpoint

from .._abi import load_artifact
from .._errors import ChainUnavailable
from .._ids import channel_id, new_salt
from .._types import ETH, UINT96_MAX, Domain, Receipt, SignedReceipt, check_uint, checksum
from ._logs import query, skipped
from ._registry import Registry
from ._send import call, contract, rpc, transact
from ._token import Token
from ._values import ChannelState, Event, SkippedReceipt, TxResult

CHANNEL_BATCH = 200  # getChannel calls per JSON-RPC batch request


class Escrow:
    """``TallyEscrow`` at ``address``."""

    def __init__(self, w3: Web3, address: str) -> None:
        self.w3 = w3
        self.contract = contract(w3, "TallyEscrow", address)
        self.address: str = self.contract.address
        self._domain: Domain | None = None
        self._registry: Registry | None = None

    @property
    def domain(self) -> Domain:
        """The EIP-712 domain every signature for this escrow uses (§4)."""
        if self._domain is None:
            with rpc():
                self._domain = Domain(int(self.w3.eth.chain_id), self.address)
        return self._domain

    @property
    def registry(self) -> Registry:
        """The registry this escrow quotes prices from."""
        if self._registry is None:
            self._registry = Registry(self.w3, call(self.contract.functions.registry()))
        return self._registry

    # reads
    def challenge_period(self) -> int:
        return int(call(self.contract.functions.challengePeriod()))

    def retired_key_valid_until(self, channel_id: bytes, key: str) -> int:
        """Until when (unix seconds, exclusive) a retired session key still signs claimable
        receipts of the channel; 0 for a key never retired from it (§7.3)."""
        fn = self.contract.functions.retiredKeyValidUntil(channel_id, checksum("key", key))
        return int(call(fn))

    def channel_id(self, client: str, provider: str, model_id: bytes, salt: bytes) -> bytes:
        """The id ``open`` gives the channel of ``client`` opened with ``salt`` (§2)."""
        return channel_id(self.address, client, provider, model_id, salt)

    def get_channel(self, channel_id: bytes, block: int | str = "latest") -> ChannelState:
        """The channel as of ``block`` (a number, or "latest"/"safe"/"finalized")."""
        raw = call(self.contract.functions.getChannel(channel_id), block)
        return ChannelState.from_abi(channel_id, raw)

    def get_channels(
        self, channel_ids: Sequence[bytes], block: int | str = "latest"
    ) -> list[ChannelState]:
        """Many channels as of ``block``, ``CHANNEL_BATCH`` ``getChannel`` calls per JSON-RPC
        batch request (a settlement pass reads every channel it holds a receipt of)."""
        out: list[ChannelState] = []
        for start in range(0, len(channel_ids), CHANNEL_BATCH):
            chunk = list(channel_ids[start : start + CHANNEL_BATCH])
            raws = self._get_channel_batch(chunk, block)
            out += [ChannelState.from_abi(c, r) for c, r in zip(chunk, raws, strict=True)]
        return out

    def _get_channel_batch(self, chunk: list[bytes], block: int | str) -> list[Any]:
        # Raw eth_calls, encoded and decoded here: web3's per-call formatters cost ~1.5 ms
        # of Python per channel, more than anvil takes to answer the whole batch.
        selector, types = _get_channel_abi()
        tag = hex(block) if isinstance(block, int) else block
        calls = [
            (
                RPCEndpoint("eth_call"),
                [{"to": self.address, "data": "0x" + (selector + cid).hex()}, tag],
            )
            for cid in chunk
        ]
        provider: Any = self.w3.provider
        try:
            with rpc():
                responses = provider.make_batch_request(calls)
        except (OSError, ValueError) as exc:  # a transport the provider does not translate
            raise ChainUnavailable(f"getChannel batch failed: {exc}") from exc
        if not isinstance(responses, list):  # the whole batch was refused
            raise ChainUnavailable(f"getChannel batch failed: {responses.get('error')}")
        out = []
        for response in responses:
            if "error" in response or "result" not in response:
                raise ChainUnavailable(f"getChannel failed: {response.get('error')}")
            out.append(abi_decode(types, bytes.fromhex(str(response["result"])[2:]))[0])
        return out

    def opened_models(
        self, provider: str, from_block: int = 0, to_block: Any = "latest"
    ) -> dict[bytes, bytes]:
        """channel id -> model id of every channel opened with ``provider`` in the range."""
        events = self.channels_opened(from_block, to_block, provider=provider)
        return {bytes(e.args["channelId"]): bytes(e.args["modelId"]) for e in events}

    def earnings(self, provider: str, token: str = ETH) -> int:
        fn = self.contract.functions.earnings(
            checksum("provider", provider), checksum("token", token)
        )
        return int(call(fn))

    def cost_of(self, channel_id: bytes, input_tokens: int, output_tokens: int) -> int:
        return int(call(self.contract.functions.costOf(channel_id, input_tokens, output_tokens)))

    def receipt_digest(self, receipt: Receipt) -> bytes:
        return bytes(call(self.contract.functions.receiptDigest(receipt.as_tuple())))

    def receipt_typehash(self) -> bytes:
        return bytes(call(self.contract.functions.RECEIPT_TYPEHASH()))

    # writes: client
    def open(
        self,
        account: LocalAccount,
        provider: str,
        model_id: bytes,
        amount: int,
        session_key: str = ETH,
        *,
        token: str,
        max_input_price_per_m: int,
        max_output_price_per_m: int,
        salt: bytes | None = None,
    ) -> TxResult:
        """Open a channel with ``amount`` of ``token``; ``value`` is its id.

        ``token`` and the price limits are required, with no default: pass the listing the
        caller accepted, so that a listing changed before the transaction is mined reverts it
        (``ContractError`` ``EscrowTokenMismatch(listed, expected)`` or
        ``EscrowPriceAboveLimit(input, output, maxInput, maxOutput)``) instead of reaching the
        channel. ``2**96 - 1`` is no price limit, for a caller that says so. An ERC-20 is
        approved for exactly ``amount`` right before the ``open`` and the previous allowance is
        restored if it fails. ``salt`` (random by default) fixes the id before it is mined:
        ``channel_id(client, provider, model_id, salt)``.
        """
        provider = checksum("provider", provider)
        limits = (
            check_uint("max_input_price_per_m", max_input_price_per_m, UINT96_MAX),
            check_uint("max_output_price_per_m", max_output_price_per_m, UINT96_MAX),
        )
        token = checksum("token", token)
        salt = new_salt() if salt is None else salt
        key = checksum("key", session_key)
        fn = self.contract.functions.open(provider, model_id, token, amount, key, *limits, salt)
        with self._funding(account, token, amount) as value:
            result = transact(self.w3, account, fn, value=value)
        return result.with_value(result.event("ChannelOpened").args["channelId"])

    def top_up(self, account: LocalAccount, channel_id: bytes, amount: int) -> TxResult:
        """Add ``amount`` to the deposit (an ERC-20 approved exactly, as in ``open``)."""
        fn = self.contract.functions.topUp(channel_id, amount)
        with self._funding(account, self.get_channel(channel_id).token, amount) as value:
            return transact(self.w3, account, fn, value=value)

    @contextmanager
    def _funding(self, account: LocalAccount, token: str, amount: int) -> Iterator[int]:
        # ETH travels as msg.value; an ERC-20 is pulled by the escrow, so it needs an allowance,
        # granted for exactly this pull and taken back if the transaction fails.
        if int(token, 16) == 0:
            yield amount
            return
        with Token(self.w3, token).exact_allowance(account, self.address, amount):
            yield 0

    def authorize_session_key(
        self, account: LocalAccount, channel_id: bytes, session_key: str
    ) -> TxResult:
        fn = self.contract.functions.authorizeSessionKey(channel_id, checksum("key", session_key))
        return transact(self.w3, account, fn)

    def request_close(self, account: LocalAccount, channel_id: bytes) -> TxResult:
        """Start the challenge period; ``value`` is ``closesAt``."""
        result = transact(self.w3, account, self.contract.functions.requestClose(channel_id))
        return result.with_value(result.event("CloseRequested").args["closesAt"])

    def finalize(self, account: LocalAccount, channel_id: bytes) -> TxResult:
        """Close after the challenge period; ``value`` is the refund."""
        result = transact(self.w3, account, self.contract.functions.finalize(channel_id))
        return result.with_value(result.event("ChannelClosed").args["refund"])

    # writes: provider (claims), client or provider (cooperative close)
    def claim(self, account: LocalAccount, signed: SignedReceipt, **kw: Any) -> TxResult:
        """Claim one receipt (``account``: the channel's provider); ``value`` is the amount paid."""
        fn = self.contract.functions.claim(signed.receipt.as_tuple(), signed.signature)
        result = transact(self.w3, account, fn, **kw)
        return result.with_value(_claimed_total(result))

    def claim_many(
        self, account: LocalAccount, signed: Sequence[SignedReceipt], **kw: Any
    ) -> TxResult:
        """Claim a batch as ``account`` (the provider); receipts refused (another provider's
        too) are in ``result.skipped``; ``value`` is the total paid."""
        fn = self.claim_many_function(signed)
        result = transact(self.w3, account, fn, **kw)
        return result.with_value(_claimed_total(result))

    def claim_many_function(self, signed: Sequence[SignedReceipt]) -> Any:
        """The unsent ``claimMany`` call (for gas estimates)."""
        receipts = [s.receipt.as_tuple() for s in signed]
        return self.contract.functions.claimMany(receipts, [s.signature for s in signed])

    def estimate_claim_many_gas(self, sender: str, signed: Sequence[SignedReceipt]) -> int:
        with rpc():
            return int(self.claim_many_function(signed).estimate_gas({"from": sender}))

    def close_cooperative(
        self, account: LocalAccount, signed: SignedReceipt, provider_signature: bytes
    ) -> TxResult:
        """Close with a final receipt signed by both sides, sent by the client or the provider;
        ``value`` is the client's refund."""
        fn = self.contract.functions.closeCooperative(
            signed.receipt.as_tuple(), signed.signature, provider_signature
        )
        result = transact(self.w3, account, fn)
        return result.with_value(result.event("ChannelClosed").args["refund"])

    def withdraw(self, account: LocalAccount, token: str = ETH, to: str | None = None) -> TxResult:
        """Pull the caller's earnings in ``token``; ``value`` is the amount."""
        recipient = checksum("to", to or account.address)
        fn = self.contract.functions.withdraw(checksum("token", token), recipient)
        result = transact(self.w3, account, fn)
        return result.with_value(result.event("Withdrawn").args["amount"])

    # event queries (the node's settlement worker and the client's discovery)
    def channels_opened(
        self,
        from_block: int = 0,
        to_block: Any = "latest",
        *,
        channel_id: bytes | None = None,
        client: str | None = None,
        provider: str | None = None,
    ) -> list[Event]:
        filters = {"channelId": channel_id, "client": client, "provider": provider}
        return query(self.contract.events.ChannelOpened, from_block, to_block, filters)

    def close_requests(
        self, from_block: int = 0, to_block: Any = "latest", *, channel_id: bytes | None = None
    ) -> list[Event]:
        return query(
            self.contract.events.CloseRequested, from_block, to_block, {"channelId": channel_id}
        )

    def key_retirements(
        self, from_block: int = 0, to_block: Any = "latest", *, channel_id: bytes | None = None
    ) -> list[Event]:
        """``SessionKeyRetired(channelId, sessionKey, validUntil)`` events (§7.3)."""
        return query(
            self.contract.events.SessionKeyRetired, from_block, to_block, {"channelId": channel_id}
        )

    def receipts_claimed(
        self, from_block: int = 0, to_block: Any = "latest", *, channel_id: bytes | None = None
    ) -> list[Event]:
        return query(
            self.contract.events.ReceiptClaimed, from_block, to_block, {"channelId": channel_id}
        )

    def receipts_skipped(
        self, from_block: int = 0, to_block: Any = "latest", *, channel_id: bytes | None = None
    ) -> list[SkippedReceipt]:
        events = query(
            self.contract.events.ReceiptSkipped, from_block, to_block, {"channelId": channel_id}
        )
        return [skipped(ev) for ev in events]

    def block_number(self) -> int:
        with rpc():
            return int(self.w3.eth.block_number)


def _claimed_total(result: TxResult) -> int:
    return sum(int(ev.args["amount"]) for ev in result.events_named("ReceiptClaimed"))


@cache
def _get_channel_abi() -> tuple[bytes, list[str]]:
    abi = next(e for e in load_artifact("TallyEscrow")["abi"] if e.get("name") == "getChannel")
    return function_abi_to_4byte_selector(abi), get_abi_output_types(abi)
