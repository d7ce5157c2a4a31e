"""The client's side of metering: request signatures, verify, countersign, store, receipts.

Order matters (Guarantee 3 of DESIGN.md): a receipt is on disk before the node sees it, and a
bill that does not verify is never countersigned; its evidence is stored instead. A request
is stored as pending before it is sent; one that ends without a record (the caller stopped
reading, the connection dropped, the process died) is resolved from the node's signed record
before the channel's next request (docs/protocol.md §6).

Signatures are by the channel's session key when it has one, else by the wallet.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import httpx
from eth_account.signers.local import LocalAccount
from tallystick.protocol import (
    ProtocolError,
    Receipt,
    RequestAuth,
    TokenCounter,
    UsageBill,
    sign_receipt,
    sign_request_auth,
)

from ._counting import PromptCounter
from ._disputes import challenge_period, way_out
from ._errors import (
    BillingDispute,
    ChannelDisputed,
    ClientError,
    InsufficientDeposit,
    Mismatch,
    NodeError,
    NodeUnavailable,
    WalletError,
)
from ._locks import ChannelLock, LockWait
from ._node import Authorizer, NodeClient
from ._store import Store
from ._tokenizers import TokenizerCache
from ._types import OpenChannel, Pending
from ._verify import (
    DEFAULT_TOLERANCE,
    Served,
    Tolerance,
    VerifiedBill,
    payable_output_tokens,
    verify_bill,
)
from ._wallet import Wallet

if TYPE_CHECKING:
    from ._auditor import Auditor
    from ._chain import Chain

__all__ = ["LOCK_TIMEOUT_S", "Biller"]

log = logging.getLogger("tallystick.client")

REQUEST_TTL_S = 60  # a request signature is valid this long (the node takes it once)
MAX_UNSEEN_TOKENS = 16  # ids a node may bill past what an interrupted stream delivered
RECORD_WAIT_S = 10.0  # how long a node may take to sign the record of an interrupted request
LOCK_TIMEOUT_S = 900.0  # how long a request waits for another one on its channel


class Biller:
    """Verifies bills and countersigns receipts for every channel of one wallet and store."""

    def __init__(
        self,
        wallet: Wallet | None,
        store: Store,
        tokenizers: TokenizerCache,
        http: httpx.Client,
        *,
        post_receipts: bool = True,
        max_unseen_tokens: int = MAX_UNSEEN_TOKENS,
        record_wait_s: float = RECORD_WAIT_S,
        tolerance: Tolerance = DEFAULT_TOLERANCE,
        chain: Chain | None = None,
        on_lock_wait: LockWait | None = None,
    ) -> None:
        self.wallet = wallet
        self.store = store
        self.tokenizers = tokenizers
        self.http = http
        self.post_receipts = post_receipts  # False: piggyback on the next request only
        self.max_unseen_tokens = max_unseen_tokens
        self.record_wait_s = record_wait_s
        self.tolerance = tolerance
        self.chain = chain  # only to name the challenge period in a dispute's way out
        self.auditor: Auditor | None = None  # set by Tallystick(audit_weights=...)
        self._audit_modes: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        self.on_lock_wait = on_lock_wait
        # One request at a time per channel, across processes too (``ChannelLock``).
        self._channel_locks: dict[bytes, ChannelLock] = {}

    def channel_lock(self, channel_id: bytes) -> ChannelLock:
        with self._lock:
            lock = self._channel_locks.get(channel_id)
            if lock is None:
                lock = ChannelLock(self.store, channel_id, on_wait=self.on_lock_wait)
                self._channel_locks[channel_id] = lock
            return lock

    @contextmanager
    def locked(self, channel: OpenChannel) -> Iterator[None]:
        """Hold the channel (no request of any process in between), e.g. to close it."""
        lock = self.channel_lock(channel.channel_id)
        if not lock.acquire(timeout=LOCK_TIMEOUT_S):
            raise ClientError(f"channel {channel.hex_id} stayed busy with another request")
        try:
            yield
        finally:
            lock.release()

    def node(self, channel: OpenChannel) -> NodeClient:
        return NodeClient(channel.endpoint, self.http)

    def signer(self, channel: OpenChannel) -> LocalAccount:
        """The channel's session key if it has one, else the wallet's key."""
        session = self.store.session_account(channel.channel_id)
        if session is not None:
            return session
        if self.wallet is None:
            raise WalletError(
                f"channel {channel.hex_id} has no session key in the store: the wallet's key "
                "is needed to sign for it"
            )
        return self.wallet.account

    def authorization(self, channel: OpenChannel, method: str, path: str, body: bytes) -> str:
        """The ``Authorization`` value for one request (§4.3): signed for this request only.

        ``seq`` is the channel's next request and ``lastRoot`` the root of the last receipt
        countersigned; ``path`` is the route from ``/v1/`` on.
        """
        tally = self.store.tally(channel.channel_id)
        auth = RequestAuth.for_request(
            channel.channel_id,
            tally.seq + 1,
            tally.usage_root,
            method,
            path,
            body,
            REQUEST_TTL_S,
        )
        return sign_request_auth(self.signer(channel), channel.domain, auth).header()

    def authorizer(self, channel: OpenChannel) -> Authorizer:
        """``authorization`` bound to ``channel``, for ``NodeClient`` calls."""
        return lambda method, path, body: self.authorization(channel, method, path, body)

    def counter(self, channel: OpenChannel) -> TokenCounter:
        return self.prompt_counter(channel).counter

    def prompt_counter(self, channel: OpenChannel) -> PromptCounter:
        """Counts chat prompts by the protocol's rule, re-encoding only text not seen before."""
        node = self.node(channel)
        return self.tokenizers.prompt_counter(node, channel.model, channel.tokenizer_hash)

    def pending_receipt(self, channel: OpenChannel) -> str | None:
        """The ``X-Tally-Receipt`` value when the last receipt has not reached the node."""
        tally = self.store.tally(channel.channel_id)
        if tally.receipt is None or tally.delivered:
            return None
        return tally.receipt.to_header()

    def countersign(
        self,
        channel: OpenChannel,
        served: Served,
        bill_json: Any,
        evidence: dict[str, Any],
    ) -> VerifiedBill:
        """Verify a response's bill (its ``tallystick`` object), then countersign and store it."""
        return self._verify_and_sign(channel, served, bill_json, evidence)

    def audit_later(
        self, channel: OpenChannel, body: dict[str, Any], served: Served, bill_json: Any
    ) -> None:
        """Hand a verified response to the auditor (§10.4); it picks a fraction, off-path."""
        if self.auditor is None or self.auditor.fraction <= 0:
            return
        from ._auditor import case_from_response

        try:
            case = case_from_response(channel, body, served.prompt_ids, bill_json)
        except (ProtocolError, ValueError, TypeError) as exc:
            log.warning("cannot audit channel %s: %s", channel.hex_id, exc)
            return
        if case is not None:
            # A record without a proof is audited greedily only if the node says that holds.
            vouch = None if case.proof else (lambda: self.advertised_audit(channel))
            self.auditor.consider(case, advertised=vouch)

    def advertised_audit(self, channel: OpenChannel) -> str:
        """The node's ``audit`` in ``/v1/models`` (§10.5), asked once per endpoint and model."""
        key = (channel.endpoint, channel.model)
        if key not in self._audit_modes:
            try:
                models = self.node(channel).models()
            except ClientError as exc:
                log.warning("cannot read %s's audit terms: %s", channel.endpoint, exc)
                return "none"
            entry = next((m for m in models if m.get("id") == channel.model), {})
            self._audit_modes[key] = str(entry.get("audit") or "none")
        return self._audit_modes[key]

    def _sign_receipt(self, channel: OpenChannel, bill: VerifiedBill) -> VerifiedBill:
        record = bill.record.record
        receipt = Receipt(
            channel.channel_id, record.input_tokens, record.output_tokens, record.usage_root()
        )
        signed_receipt = sign_receipt(self.signer(channel), channel.domain, receipt)
        self.store.record_verified(bill.record, signed_receipt, bill.cost)
        if self.post_receipts:
            self.deliver(channel)
        return bill

    # before a request: a channel that can still be used, a max_tokens the deposit can pay

    def check_usable(self, channel: OpenChannel) -> None:
        """Raise ``ChannelDisputed`` when a bill on ``channel`` was refused."""
        disputes = self.store.disputes(channel.channel_id)
        if disputes:
            ids = [d.id for d in disputes]
            raise ChannelDisputed(channel.channel_id, ids, self.way_out(channel))

    def way_out(self, channel: OpenChannel) -> str:
        return way_out(channel, challenge_period(self.chain))

    def max_tokens(self, channel: OpenChannel, served: Served) -> int:
        """The ``max_tokens`` to send: what the caller asked, at most what the deposit can pay.

        The node would otherwise apply its own limit, and a bill up to that limit would be
        within the rules; so the SDK always sends one (§8.1). ``InsufficientDeposit`` when the
        deposit cannot pay one completion token after the prompt.
        """
        tally = self.store.tally(channel.channel_id)
        payable = payable_output_tokens(channel, tally, len(served.prompt_ids))
        if payable < 1:
            raise InsufficientDeposit(
                f"channel {channel.hex_id}'s deposit ({channel.deposit}) cannot pay this "
                f"prompt ({len(served.prompt_ids)} tokens) and one completion token on top of "
                "what is already countersigned: top up the channel (tallystick channel topup) "
                "or shorten the prompt"
            )
        room = max(channel.context_length - len(served.prompt_ids), 1)  # else the node's 400
        asked = served.max_tokens if served.max_tokens is not None else payable
        return min(asked, payable, room)

    # interrupted requests (§6, last bullet)

    def begin(self, channel: OpenChannel, served: Served) -> int:
        """Store the request as pending before it is sent; return its seq."""
        seq = self.store.tally(channel.channel_id).seq + 1
        self.store.set_pending(channel.channel_id, seq, served.to_json())
        return seq

    def interrupted(self, channel: OpenChannel, seq: int, served: Served) -> None:
        """The answer stopped before its record: remember exactly what was received."""
        self.store.set_pending(channel.channel_id, seq, served.to_json(), received=True)

    def ended_by_node(
        self, channel: OpenChannel, seq: int, served: Served, *, now: bool = True
    ) -> VerifiedBill | None:
        """The node closed the answer cleanly without its record: resolve it (``now``, else
        before the next request) paying only for what arrived: its record, if it signed one,
        may hold no id past the received text."""
        pending = {**served.to_json(), "ended_by_node": True}
        self.store.set_pending(channel.channel_id, seq, pending, received=True)
        return self.resolve_pending(channel) if now else None

    def resolve_pending(self, channel: OpenChannel) -> VerifiedBill | None:
        """Verify and countersign an interrupted request's signed record from the node (§6).

        None when there is nothing to resolve, or the node signed no record of it.
        """
        pending = self.store.pending(channel.channel_id)
        if pending is None:
            return None
        tally = self.store.tally(channel.channel_id)
        if pending.seq <= tally.seq:  # countersigned after all (e.g. a crash after the write)
            self.store.clear_pending(channel.channel_id, pending.seq)
            return None
        try:
            raw = self._fetch_record(channel, pending)
        except (NodeError, NodeUnavailable):
            raise
        except ClientError:
            if not pending.served.get("ended_by_node"):
                raise
            # The node closed the answer itself, yet says its record is still being served.
            missing = Mismatch("record", "the usage record of the answer", "still pending")
            missing_dispute = BillingDispute(channel.channel_id, pending.seq, [missing])
            raise self._dispute(missing_dispute, {"request": pending.served}, None) from None
        if raw is None:
            return None
        served = Served.from_json(pending.served)
        # Unseen ids are paid only when the client itself stopped reading (guarantee 7).
        ended_by_node = bool(pending.served.get("ended_by_node"))
        evidence = {"request": pending.served, "interrupted": True, "ended_by_node": ended_by_node}
        unseen = 0 if ended_by_node else self.max_unseen_tokens
        return self._verify_and_sign(
            channel, served, raw, evidence, seq=pending.seq, max_unseen=unseen
        )

    def _verify_and_sign(
        self,
        channel: OpenChannel,
        served: Served,
        bill_json: Any,
        evidence: dict[str, Any],
        *,
        seq: int | None = None,
        max_unseen: int | None = None,
    ) -> VerifiedBill:
        """Countersign a bill that checks out; store one that does not as a dispute and raise it.

        ``seq`` and ``max_unseen`` are given for an interrupted request (``verify_bill``).
        """
        tally = self.store.tally(channel.channel_id)
        counter = self.counter(channel)
        try:
            usage = UsageBill.from_json(bill_json)
            bill = verify_bill(
                channel,
                tally,
                usage.signed,
                usage.completion_ids,
                served,
                counter,
                self.tolerance,
                max_unseen=max_unseen,
            )
        except BillingDispute as dispute:
            raise self._dispute(dispute, evidence, bill_json) from None
        except ProtocolError as exc:
            malformed = BillingDispute(
                channel.channel_id, seq, [Mismatch("record", "valid", str(exc))]
            )
            raise self._dispute(malformed, evidence, bill_json) from exc
        return self._sign_receipt(channel, bill)

    def _fetch_record(self, channel: OpenChannel, pending: Pending) -> Any:
        """The node's record of the pending request, or None when it has none (§6).

        ``record_pending`` (the node is still serving the request, e.g. it has not noticed
        the disconnect yet) is waited for; ``record_not_found`` is final: the node served
        nothing that could become the record (it never got the request, or it was restarted
        before it signed one), so the request is dropped as unbilled at once.
        """
        deadline = time.monotonic() + self.record_wait_s
        delay = 0.05
        while True:
            try:
                return self.node(channel).record(
                    channel.channel_id, pending.seq, self.authorizer(channel)
                )
            except NodeError as exc:
                if exc.status != 404:
                    raise
                if exc.code == "record_not_found":
                    break
            if time.monotonic() > deadline:
                raise ClientError(
                    f"the node is still serving request seq {pending.seq} of channel "
                    f"{channel.hex_id}, whose answer was interrupted; retry later"
                )
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        # The node never signed it: nothing is owed, whatever part of the answer arrived.
        self.store.clear_pending(channel.channel_id, pending.seq)
        return None

    def deliver(self, channel: OpenChannel) -> None:
        """Post the last receipt unless the node has it; on failure it waits for a retry."""
        tally = self.store.tally(channel.channel_id)
        if tally.receipt is None or tally.delivered:
            return
        try:
            self.node(channel).post_receipt(tally.receipt)
        except ClientError:
            return  # stays undelivered: piggybacked on the next request, or posted on close
        self.store.mark_delivered(channel.channel_id, tally.seq)

    def _dispute(
        self, dispute: BillingDispute, evidence: dict[str, Any], bill_json: Any
    ) -> BillingDispute:
        # The evidence replaces the pending entry: a disputed bill is never resolved later.
        self.store.clear_pending(dispute.channel_id)
        dispute.leave_by(self.way_out(self.store.channel(dispute.channel_id)))
        dispute.evidence = {**evidence, "tallystick": bill_json}
        dispute.dispute_id = self.store.add_dispute(
            dispute.channel_id,
            dispute.seq,
            [m.to_json() for m in dispute.mismatches],
            dispute.evidence,
        )
        return dispute
