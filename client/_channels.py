"""Channel lifecycle: open (ETH or ERC-20), top up, close (cooperative or unilateral), balances."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tallystick.protocol import (
    ETH,
    ZERO_ROOT,
    ChannelStatus,
    Receipt,
    SignedReceipt,
    TxResult,
    cost_of,
    recover_receipt_signer,
    sign_receipt,
)

from ._chain import Chain, Offer
from ._discovery import check_node_listing, choose_offer
from ._disputes import utc
from ._errors import ChannelStateError, ClientError, NodeError
from ._prechecks import require_funds, require_status
from ._types import OpenChannel

if TYPE_CHECKING:
    from ._client import Tallystick

__all__ = ["Balance", "Channels", "Closed"]


@dataclass(frozen=True)
class Balance:
    """Where a channel's money is: deposited, countersigned (spent), paid on-chain, refundable."""

    channel_id: bytes
    deposit: int
    spent: int  # cost of the last countersigned receipt
    paid: int  # already claimed by the provider on-chain
    refundable: int  # deposit minus what the provider can still claim
    status: ChannelStatus
    token: str


@dataclass(frozen=True)
class Closed:
    """The outcome of a close: what the provider was paid and what came back."""

    channel_id: bytes
    paid: int
    refund: int
    tx_hash: str


class Channels:
    """``client.channels``: on-chain channel operations for the client's wallet."""

    def __init__(self, client: Tallystick) -> None:
        self._client = client

    @property
    def _chain(self) -> Chain:
        return self._client.chain

    def open(
        self,
        model: str,
        deposit: int,
        provider: str | None = None,
        *,
        max_input_price: int | None = None,
        max_output_price: int | None = None,
        check_node: bool = True,
        session_key: bool = False,
    ) -> OpenChannel:
        """Open a channel to ``provider`` (or the cheapest) for ``model`` with ``deposit``.

        ``max_input_price``/``max_output_price`` bound the offers considered. The offer's own
        prices and token (checked against the node's ``/v1/models``) are the limits of the
        ``open`` transaction, so a price raised or a token switched before it is mined raises
        ``PriceChanged`` or ``TokenChanged`` and nothing is deposited (no allowance is left
        behind either).

        ``session_key=True`` authorises a fresh key for this channel alone in the same
        transaction; it signs the channel's requests and receipts, so the wallet's key is
        needed again only to top up or close (see ``Store.add_session_key`` for its storage).
        """
        if deposit <= 0:
            raise ClientError("the deposit must be a positive amount (in base units)")
        offer = choose_offer(
            self._chain,
            model,
            provider,
            max_input_price=max_input_price,
            max_output_price=max_output_price,
        )
        if check_node:
            check_node_listing(self._client.node(offer.endpoint), offer)
        account = self._client.account
        require_funds(self._chain, account.address, offer.token, deposit, "the deposit")
        # The key is on disk before the transaction that authorises it is sent.
        key = self._client.store.new_session_key() if session_key else None
        cid, _ = self._chain.open_channel(
            account,
            offer.provider,
            model,
            deposit,
            key.address if key else ETH,
            token=offer.token,
            max_prices=offer.prices,
        )
        info = self._info(cid, offer)
        self._client.store.add_channel(info)
        if key is not None:
            self._client.store.bind_session_key(key.address, cid)
        return info

    def authorize_session_key(self, channel: bytes | str) -> str:
        """Give an open channel a fresh session key (replacing any); return its address."""
        info = self._client.channel(channel)
        # The node takes new receipts only from the current key (§7.3): deliver the last one first.
        self._client.biller.deliver(info)
        key = self._client.store.new_session_key()
        self._chain.authorize_session_key(self._client.account, info.channel_id, key.address)
        self._client.store.bind_session_key(key.address, info.channel_id)
        return str(key.address)

    def top_up(self, channel: bytes | str, amount: int) -> OpenChannel:
        """Add ``amount`` to an open channel's deposit."""
        info = self._client.channel(channel)
        if amount <= 0:
            raise ClientError("the top-up must be a positive amount (in base units)")
        require_status(self._chain, info, (ChannelStatus.OPEN,), "top up")
        require_funds(self._chain, self._client.account.address, info.token, amount, "the top-up")
        self._chain.top_up(self._client.account, info.channel_id, amount)
        deposit = self._chain.channel(info.channel_id).deposit
        self._client.store.update_channel(info.channel_id, deposit=deposit)
        return self._client.channel(info.channel_id)

    def sync(self, channel: bytes | str, confirmations: int = 0) -> OpenChannel:
        """Store the channel's deposit and status as the chain has them ``confirmations`` deep.

        The chain, not the store, is the truth: after a reorg dropped a top-up (or an open
        turned out to be shallower than thought), this brings the store back to it.
        """
        info = self._client.channel(channel)
        state = self._chain.channel(info.channel_id, confirmations)
        self._client.store.update_channel(
            info.channel_id, deposit=state.deposit, status=state.status
        )
        return self._client.channel(info.channel_id)

    def close(self, channel: bytes | str) -> Closed:
        """Cooperative close: the node countersigns the final receipt, then ``closeCooperative``."""
        info = self._client.channel(channel)
        biller = self._client.biller
        # A disputed channel has a record the node will not close without: say the way out.
        biller.check_usable(info)
        if self._client._chain is not None:  # without one, the node's answer says it
            require_status(self._chain, info, (ChannelStatus.OPEN,), "close")
        with biller.locked(info):  # no request of another process in between
            biller.resolve_pending(info)  # an interrupted request is part of the final total
            final = self._final_receipt(info)
            provider_sig = biller.node(info).close(final, biller.authorizer(info))
        signed_by = recover_receipt_signer(info.domain, SignedReceipt(final.receipt, provider_sig))
        if signed_by.lower() != info.provider.lower():
            raise ClientError(f"the node's close signature is by {signed_by}, not {info.provider}")
        tx = self._chain.close_cooperative(self._client.account, final, provider_sig)
        return self._closed(info, tx)

    def close_auto(self, channel: bytes | str) -> Closed | int:
        """Close cooperatively; a channel with no request falls back to ``request_close``.

        A node may refuse to countersign the zero receipt of an unused channel (it holds no
        record it could match it with); then only the unilateral path refunds the deposit,
        so it is taken at once. Returns ``Closed``, or ``closesAt`` when the close is pending.
        """
        info = self._client.channel(channel)
        try:
            return self.close(info.channel_id)
        except NodeError:
            if self._client.store.tally(info.channel_id).receipt is not None:
                raise  # with requests served, a unilateral close is the caller's decision
            return self.request_close(info.channel_id)

    def request_close(self, channel: bytes | str) -> int:
        """Start a unilateral close; return ``closesAt`` (unix seconds)."""
        info = self._client.channel(channel)
        require_status(self._chain, info, (ChannelStatus.OPEN,), "close")
        biller = self._client.biller
        # No request of another process in between: its pending request is not ours to resolve.
        with biller.locked(info):
            with contextlib.suppress(ClientError):
                # An unverifiable bill stays unsigned: closing is the way out of it.
                biller.resolve_pending(info)
            biller.deliver(info)  # the provider may still claim what we owe it
        closes_at = self._chain.request_close(self._client.account, info.channel_id)
        self._client.store.update_channel(info.channel_id, status=ChannelStatus.CLOSING)
        return closes_at

    def finalize(self, channel: bytes | str) -> Closed:
        """After the challenge period: refund what the provider did not claim."""
        info = self._client.channel(channel)
        state = self._chain.channel(info.channel_id)
        if state.status != ChannelStatus.CLOSING:
            raise ChannelStateError(
                f"channel {info.hex_id} is {state.status}, not closing: run request_close first"
            )
        now = self._chain.now()
        if now < state.closes_at:
            raise ChannelStateError(
                f"the challenge period of channel {info.hex_id} ends at {utc(state.closes_at)} "
                f"({state.closes_at - now} s from the chain's latest block): run finalize after "
                "that; meanwhile the provider may still claim what you countersigned"
            )
        tx = self._chain.finalize(self._client.account, info.channel_id)
        return self._closed(info, tx)

    def balance(self, channel: bytes | str) -> Balance:
        """Deposit, countersigned spend, on-chain payment and refundable amount."""
        info = self._client.channel(channel)
        tally = self._client.store.tally(info.channel_id)
        state = self._chain.channel(info.channel_id)
        spent = min(cost_of(tally.input_tokens, tally.output_tokens, info.prices), state.deposit)
        status = state.status
        if status not in (info.status, ChannelStatus.NONE):
            self._client.store.update_channel(info.channel_id, status=status)
        refundable = 0 if status == ChannelStatus.CLOSED else state.deposit - max(spent, state.paid)
        return Balance(
            info.channel_id, state.deposit, spent, state.paid, refundable, status, info.token
        )

    def list(self, status: ChannelStatus | None = None) -> list[OpenChannel]:
        """Channels in the local store, newest first."""
        return self._client.store.channels(status=status)

    def _final_receipt(self, info: OpenChannel) -> SignedReceipt:
        tally = self._client.store.tally(info.channel_id)
        if tally.receipt is not None:
            return tally.receipt
        # No request yet: a zero receipt closes the channel with a full refund.
        signer = self._client.biller.signer(info)
        return sign_receipt(signer, info.domain, Receipt(info.channel_id, 0, 0, ZERO_ROOT))

    def _closed(self, info: OpenChannel, tx: TxResult) -> Closed:
        state = self._chain.channel(info.channel_id)
        self._client.store.update_channel(info.channel_id, status=state.status)
        return Closed(info.channel_id, state.paid, int(tx.value), "0x" + tx.tx_hash.hex())

    def _info(self, cid: bytes, offer: Offer) -> OpenChannel:
        # Prices and token as the escrow snapshotted them, not as listed a block earlier.
        state = self._chain.channel(cid)
        return OpenChannel(
            channel_id=cid,
            chain_id=self._chain.chain_id,
            escrow=self._chain.escrow.address,
            client=self._client.account.address,
            provider=offer.provider,
            endpoint=offer.endpoint,
            model=offer.model,
            token=state.token,
            prices=state.prices,
            deposit=state.deposit,
            tokenizer_hash=offer.tokenizer_hash,
            context_length=offer.context_length,
            status=ChannelStatus.OPEN,
            model_hash=offer.model_hash,
        )
