"""The client's side of metering: bearer tokens, verify, countersign, store, hand the receipt over.

Order matters (Guarantee 3 of DESIGN.md): a receipt is on disk before the node sees it, and a
bill that does not verify is never countersigned; its evidence is stored instead.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
from tallystick.protocol import (
    ProtocolError,
    Receipt,
    SignedUsageRecord,
    TokenCounter,
    make_bearer_token,
    sign_receipt,
)

from ._errors import BillingDispute, ClientError, Mismatch
from ._node import NodeClient
from ._store import ChannelInfo, Store
from ._tokenizers import TokenizerCache
from ._verify import Served, VerifiedBill, verify_bill
from ._wallet import Wallet

__all__ = ["RECEIPT_HEADER", "Biller"]

RECEIPT_HEADER = "X-Tally-Receipt"
BEARER_TTL_S = 3600
BEARER_RENEW_S = 60  # renew a token this long before it expires


class Biller:
    """Verifies bills and countersigns receipts for every channel of one wallet and store."""

    def __init__(
        self,
        wallet: Wallet,
        store: Store,
        tokenizers: TokenizerCache,
        http: httpx.Client,
        *,
        post_receipts: bool = True,
    ) -> None:
        self.wallet = wallet
        self.store = store
        self.tokenizers = tokenizers
        self.http = http
        self.post_receipts = post_receipts  # False: piggyback on the next request only
        self._tokens: dict[bytes, tuple[str, int]] = {}
        self._lock = threading.Lock()
        # One request at a time per channel: the node's credit rule allows one unpaid record.
        self._channel_locks: dict[bytes, threading.Lock] = {}

    def channel_lock(self, channel_id: bytes) -> threading.Lock:
        with self._lock:
            return self._channel_locks.setdefault(channel_id, threading.Lock())

    def node(self, channel: ChannelInfo) -> NodeClient:
        return NodeClient(channel.endpoint, self.http)

    def bearer(self, channel: ChannelInfo) -> str:
        """A bearer token for the channel (§4.3), reused until shortly before it expires."""
        with self._lock:
            cached = self._tokens.get(channel.channel_id)
            if cached and cached[1] - BEARER_RENEW_S > time.time():
                return cached[0]
            token = make_bearer_token(
                self.wallet.account, channel.domain, channel.channel_id, BEARER_TTL_S
            )
            self._tokens[channel.channel_id] = (token.encode(), token.expires_at)
            return token.encode()

    def counter(self, channel: ChannelInfo) -> TokenCounter:
        return self.tokenizers.counter(self.node(channel), channel.model, channel.tokenizer_hash)

    def pending_receipt(self, channel: ChannelInfo) -> str | None:
        """The ``X-Tally-Receipt`` value when the last receipt has not reached the node."""
        tally = self.store.tally(channel.channel_id)
        if tally.receipt is None or tally.delivered:
            return None
        return json.dumps(tally.receipt.to_json(), separators=(",", ":"))

    def settle(
        self,
        channel: ChannelInfo,
        served: Served,
        tallystick: Any,
        evidence: dict[str, Any],
    ) -> VerifiedBill:
        """Verify the ``tallystick`` object of a response, then countersign and store it."""
        tally = self.store.tally(channel.channel_id)
        counter = self.counter(channel)
        try:
            signed, ids = _parse(tallystick)
            bill = verify_bill(channel, tally, signed, ids, served, counter)
        except BillingDispute as dispute:
            raise self._dispute(dispute, evidence, tallystick) from None
        except ProtocolError as exc:
            malformed = BillingDispute(
                channel.channel_id, None, [Mismatch("record", "valid", str(exc))]
            )
            raise self._dispute(malformed, evidence, tallystick) from exc
        record = bill.record.record
        receipt = Receipt(
            channel.channel_id, record.input_tokens, record.output_tokens, record.usage_root()
        )
        signed_receipt = sign_receipt(self.wallet.account, channel.domain, receipt)
        self.store.record_verified(bill.record, signed_receipt, bill.cost)
        if self.post_receipts:
            self.deliver(channel)
        return bill

    def deliver(self, channel: ChannelInfo) -> None:
        """Post the last receipt unless the node has it; on failure it waits for a retry."""
        tally = self.store.tally(channel.channel_id)
        if tally.receipt is None or tally.delivered:
            return
        try:
            self.node(channel).post_receipt(tally.receipt, self.bearer(channel))
        except ClientError:
            return  # stays undelivered: piggybacked on the next request, or posted on close
        self.store.mark_delivered(channel.channel_id, tally.seq)

    def _dispute(
        self, dispute: BillingDispute, evidence: dict[str, Any], tallystick: Any
    ) -> BillingDispute:
        dispute.evidence = {**evidence, "tallystick": tallystick}
        dispute.dispute_id = self.store.add_dispute(
            dispute.channel_id,
            dispute.seq,
            [m.to_json() for m in dispute.mismatches],
            dispute.evidence,
        )
        return dispute


def _parse(tallystick: Any) -> tuple[SignedUsageRecord, list[int]]:
    if not isinstance(tallystick, dict):
        raise ProtocolError("the response carries no tallystick usage record")
    signed = SignedUsageRecord.from_json(tallystick)
    ids = tallystick.get("completion_token_ids")
    if not isinstance(ids, list) or not all(isinstance(i, int) and i >= 0 for i in ids):
        raise ProtocolError("completion_token_ids must be a list of token ids")
    return signed, ids
