"""The payment gate (§8.1): request signatures, the credit rule, receipts, and signing records.

A channel's book (last record, countersigned seq, reservations in flight, closing flag) lives
in the ledger, so several replicas sharing one ledger apply one credit rule and one usage
chain. Each step that reads the book and writes it runs inside ``ledger.channel_lock``, a
transaction holding the channel against every other process; no ``await`` happens inside
it. A request reserves its worst case (prompt + max_tokens) before generating and is signed
for its real counts after, so concurrent requests, on any replica, can never overdraw the deposit.
A per-channel asyncio lock in front keeps this process's requests from refreshing the chain
all at once.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass

from eth_account.signers.local import LocalAccount
from tallystick.protocol import (
    ZERO_ROOT,
    ChainError,
    ChannelState,
    ChannelStatus,
    Domain,
    InvalidSignature,
    Receipt,
    SignedReceipt,
    UsageRecord,
    cost_of,
    hash_proof,
    hash_token_ids,
    model_id,
    recover_receipt_signer,
    sign_receipt,
    sign_usage_record,
)

from ._auth import Authorized, SeenRequests, parse_request_auth, signer_of
from ._chain import ChannelCache
from ._errors import ApiError, chain_unavailable
from ._ledger import Book, LedgerStore
from ._types import Provenance, StoredReceipt, StoredRecord

__all__ = ["Authorized", "PaymentGate", "Reservation"]


@dataclass
class Reservation:
    """A request's worst case, held from the credit check until its record is signed."""

    channel: ChannelState
    prompt_tokens: int
    max_tokens: int
    reservation_id: int
    released: bool = False  # given back: by finalize (signed) or release (nothing billable)


class PaymentGate:
    """Authorises requests, applies the credit rule, signs usage records, takes receipts."""

    def __init__(
        self,
        *,
        account: LocalAccount,
        domain: Domain,
        cache: ChannelCache,
        ledger: LedgerStore,
        credit_requests: int = 1,
        replica_ttl: float = 10.0,
    ) -> None:
        self._account = account
        self.domain = domain
        self.provider: str = account.address
        self._cache = cache
        self._ledger = ledger
        self.credit_requests = credit_requests
        # This process's name in the ledger: its reservations count while it heartbeats.
        self.owner = uuid.uuid4().hex
        self.replica_ttl = replica_ttl
        self._locks: defaultdict[bytes, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._arriving: defaultdict[bytes, int] = defaultdict(int)  # authorised, not reserved
        self._seen = SeenRequests()
        self.heartbeat()

    def heartbeat(self) -> None:
        """Say this replica is alive; drop the reservations of replicas that died."""
        self._ledger.heartbeat(self.owner, time.time(), self.replica_ttl)

    # auth ----------------------------------------------------------------------------------

    async def authenticate(
        self, authorization: str | None, method: str, path: str, body: bytes
    ) -> Authorized:
        """The channel a request signature (§4.3) opens; each signature is taken once.

        Checks form, expiry and the request it is bound to, then that the signer is the
        channel's client or session key. A spending request's seq and root are checked by
        ``reserve``, under the channel's lock.
        """
        signed = parse_request_auth(authorization, method, path, body)
        auth = signed.auth
        signer = signer_of(self.domain, signed)
        refused = ApiError(
            401,
            f"the request is signed by {signer}, which is neither the channel's client nor its "
            "session key",
            code="invalid_signer",
        )
        channel = await self._signed_by(await self._channel(auth.channel_id), signer, refused)
        self._seen.use(auth.struct_hash(), auth.expires_at, time.time())
        return Authorized(channel, auth, signer)

    def check_model(self, channel: ChannelState, model: str) -> None:
        """400 unless ``channel`` was opened for ``model``."""
        if channel.model_id != model_id(model):
            raise ApiError(
                400,
                f"this channel was opened for another model than {model!r}",
                code="model_mismatch",
                param="model",
            )

    async def _channel(self, channel_id: bytes, *, refresh: bool = False) -> ChannelState:
        try:
            channel = await self._cache.get(channel_id, refresh=refresh)
        except ChainError as exc:
            # Only a channel the node has never seen gets here (the cache serves known ones
            # from their last state): a transient outage, not the client's fault.
            raise chain_unavailable(exc) from exc
        if channel is None or channel.status == ChannelStatus.NONE:
            raise ApiError(
                401, f"channel 0x{channel_id.hex()} does not exist", code="channel_not_found"
            )
        if channel.provider != self.provider:
            raise ApiError(
                401,
                f"channel 0x{channel_id.hex()} pays provider {channel.provider}, not this node "
                f"({self.provider})",
                code="wrong_provider",
            )
        return channel

    def arrive(self, channel_id: bytes) -> None:
        """An authorised request is on its way to ``reserve``; ``leave`` when it got there."""
        self._arriving[channel_id] += 1

    def leave(self, channel_id: bytes) -> None:
        self._arriving[channel_id] -= 1
        if not self._arriving[channel_id]:
            del self._arriving[channel_id]

    def record_pending(self, channel_id: bytes, seq: int) -> bool:
        """Whether a request being served now may still become record ``seq`` (§8).

        Reservations count on every live replica (the ledger's book); requests between
        authorisation and reservation only on this one.
        """
        book = self._ledger.book(channel_id)
        return seq > book.seq and (book.in_flight > 0 or self._arriving.get(channel_id, 0) > 0)

    # credit rule ---------------------------------------------------------------------------

    async def reserve(
        self, authorized: Authorized, prompt_tokens: int, max_tokens: int
    ) -> Reservation:
        """Hold the request's worst case, or raise 402 saying what the client must do.

        The signed seq and root are checked under the channel's ledger lock, after the
        channel's state and before the credit rule: a request the client did not sign for the
        channel's next seq never takes a seq.
        """
        channel = authorized.channel
        cid = channel.channel_id
        async with self._locks[cid]:
            for refreshed in (False, True):
                if refreshed:
                    # A top-up may have landed since we cached the deposit.
                    channel = await self._channel(cid, refresh=True)
                with self._ledger.channel_lock(cid):
                    book = self._ledger.book(cid)
                    self._check_open(channel, book)
                    self._check_next(authorized, book)
                    self._check_credit(book)
                    need = self._shortfall(channel, book, prompt_tokens, max_tokens)
                    if need <= 0:
                        rid = self._ledger.add_reservation(
                            cid, self.owner, prompt_tokens, max_tokens
                        )
                        return Reservation(channel, prompt_tokens, max_tokens, rid)
            raise ApiError(
                402,
                f"the channel's deposit ({channel.deposit}) does not cover this request's "
                f"worst case (needs {channel.deposit + need}); top up the channel or lower "
                "max_tokens",
                code="insufficient_deposit",
            )

    def _check_next(self, authorized: Authorized, book: Book) -> None:
        auth, cid = authorized.auth, authorized.channel.channel_id
        expected = book.seq + book.in_flight + 1
        receipt = self._ledger.last_receipt(cid) if book.countersigned_seq else None
        root = receipt.signed.receipt.usage_root if receipt else ZERO_ROOT
        if auth.seq != expected or auth.last_root != root:
            raise ApiError(
                409,
                f"the request is signed for seq {auth.seq} after root 0x{auth.last_root.hex()}; "
                f"this channel's next request is seq {expected} after the countersigned root "
                f"0x{root.hex()} (seq {book.countersigned_seq})",
                code="stale_request",
            )

    def _check_open(self, channel: ChannelState, book: Book) -> None:
        if book.closing or channel.status == ChannelStatus.CLOSING:
            raise ApiError(
                402,
                "the channel is closing; open a new channel to continue",
                code="channel_closing",
            )
        if channel.status != ChannelStatus.OPEN:
            raise ApiError(
                402, "the channel is closed; open a new channel to continue", code="channel_closed"
            )

    def _check_credit(self, book: Book) -> None:
        unsigned = book.seq - book.countersigned_seq + book.in_flight
        if unsigned + 1 > self.credit_requests:
            raise ApiError(
                402,
                f"countersign usage record seq {book.countersigned_seq + 1} first: send its "
                "Receipt in the X-Tally-Receipt header or POST it to /v1/tally/receipts "
                f"({unsigned} request(s) unpaid, credit is {self.credit_requests})",
                code="receipt_required",
            )

    def _shortfall(self, channel: ChannelState, book: Book, prompt: int, max_tokens: int) -> int:
        served_in, served_out = book.totals
        worst = cost_of(
            served_in + book.reserved_input + prompt,
            served_out + book.reserved_output + max_tokens,
            channel.prices,
        )
        return worst - channel.deposit

    def payable_output(self, channel: ChannelState, prompt_tokens: int) -> int:
        """The most completion ids the deposit can still pay after what is served and
        reserved and this prompt (``cost <= deposit`` with cost rounded down; may be <= 0)."""
        book = self._ledger.book(channel.channel_id)
        served_in, served_out = book.totals
        prices = channel.prices
        spendable = (channel.deposit + 1) * 1_000_000 - 1
        spendable -= (served_in + book.reserved_input + prompt_tokens) * prices.input_per_m
        if spendable < 0:
            return 0
        if prices.output_per_m == 0:
            return 2**32 - 1
        return spendable // prices.output_per_m - served_out - book.reserved_output

    def release(self, reservation: Reservation) -> None:
        """Give back a reservation whose request produced nothing billable."""
        if reservation.released:
            return
        reservation.released = True
        self._ledger.drop_reservation(reservation.reservation_id)

    def finalize(
        self,
        reservation: Reservation,
        model: str,
        prompt_ids: list[int],
        completion_ids: list[int],
        timings: dict[str, float] | None = None,
        provenance: Provenance | None = None,
    ) -> StoredRecord:
        """Sign and store the record of a finished (or cut-short) request; no awaits inside."""
        with self._ledger.channel_lock(reservation.channel.channel_id):
            self.release(reservation)
            return self._sign_next(
                reservation, model, prompt_ids, completion_ids, timings, provenance or Provenance()
            )

    def _sign_next(
        self,
        reservation: Reservation,
        model: str,
        prompt_ids: list[int],
        completion_ids: list[int],
        timings: dict[str, float] | None,
        provenance: Provenance,
    ) -> StoredRecord:
        book = self._ledger.book(reservation.channel.channel_id)
        served_in, served_out = book.totals
        prev_root = book.last.usage_root if book.last else ZERO_ROOT
        record = UsageRecord(
            channel_id=reservation.channel.channel_id,
            seq=book.seq + 1,
            prompt_tokens=len(prompt_ids),
            completion_tokens=len(completion_ids),
            prompt_hash=hash_token_ids(prompt_ids),
            completion_hash=hash_token_ids(completion_ids),
            input_tokens=served_in + len(prompt_ids),
            output_tokens=served_out + len(completion_ids),
            prev_root=prev_root,
            seed=provenance.seed,
            temperature=provenance.temperature,
            top_p=provenance.top_p,
            model_hash=provenance.model_hash,
            proof_hash=hash_proof(provenance.proof),
        )
        signed = sign_usage_record(self._account, self.domain, record)
        stored = StoredRecord(
            signed, list(completion_ids), model, time.time(), timings or {}, provenance.proof
        )
        self._ledger.add_record(stored)
        return stored

    # receipts ------------------------------------------------------------------------------

    async def accept_receipt(self, signed: SignedReceipt) -> StoredReceipt:
        """Verify a countersigned receipt against our records and store it (durably)."""
        await self._check_receipt_signer(signed)
        return self._store_receipt(signed)

    async def _check_receipt_signer(self, signed: SignedReceipt) -> None:
        channel = await self._channel(signed.receipt.channel_id)
        signer = self._receipt_signer(signed)
        refused = ApiError(
            400,
            f"the receipt is signed by {signer}, not by the channel's client or session key",
            code="receipt_signer_mismatch",
        )
        await self._signed_by(channel, signer, refused)

    async def _signed_by(
        self, channel: ChannelState, signer: str, refused: ApiError
    ) -> ChannelState:
        """``channel`` once ``signer`` is its client or session key, else raise ``refused``.

        The one check of who signed a request or a receipt. A signer the cached state does not
        know may be a session key the client has just authorised: the chain is read once more.
        """
        if not channel.may_sign(signer):
            channel = await self._channel(channel.channel_id, refresh=True)
        if not channel.may_sign(signer):
            raise refused
        return channel

    def _receipt_signer(self, signed: SignedReceipt) -> str:
        try:
            return recover_receipt_signer(self.domain, signed)
        except InvalidSignature as exc:
            raise ApiError(400, f"bad receipt signature: {exc}", code="invalid_receipt") from exc

    def _store_receipt(self, signed: SignedReceipt) -> StoredReceipt:
        receipt = signed.receipt
        record = self._ledger.find_record(receipt.channel_id, receipt.usage_root)
        rec = record.signed.record if record else None
        if (
            record is None
            or rec is None
            or (rec.input_tokens, rec.output_tokens)
            != (
                receipt.input_tokens,
                receipt.output_tokens,
            )
        ):
            raise ApiError(
                400,
                "the receipt's totals and usageRoot match no usage record this node issued",
                code="receipt_mismatch",
            )
        with self._ledger.channel_lock(receipt.channel_id):
            return self._store_newer(signed, record)

    def _store_newer(self, signed: SignedReceipt, record: StoredRecord) -> StoredReceipt:
        book = self._ledger.book(signed.receipt.channel_id)
        if record.seq < book.countersigned_seq:
            raise ApiError(
                409,
                f"record seq {book.countersigned_seq} is already countersigned; this receipt "
                f"covers only seq {record.seq}",
                code="receipt_stale",
            )
        stored = StoredReceipt(signed, record.seq, time.time())
        if record.seq > book.countersigned_seq:
            self._ledger.add_receipt(stored)  # durable before we acknowledge
        return stored

    async def countersign_close(self, signed: SignedReceipt) -> tuple[StoredReceipt, bytes]:
        """The provider's signature on the client's final receipt (for ``closeCooperative``).

        The zero receipt ``(channelId, 0, 0, 0x00..)`` of a channel that served nothing and
        has nothing in flight is countersigned too: it closes the channel with a full refund.
        """
        if _is_zero(signed.receipt):
            # Nothing to store: the contract accepts totals equal to the (zero) claimed ones,
            # and the seq check below refuses it once any record exists.
            await self._check_receipt_signer(signed)
            stored = StoredReceipt(signed, 0, time.time())
        else:
            stored = await self.accept_receipt(signed)
        with self._ledger.channel_lock(stored.channel_id):
            book = self._ledger.book(stored.channel_id)
            if stored.seq != book.seq or book.in_flight:
                raise ApiError(
                    409,
                    f"the final receipt must cover the last record (seq {book.seq}) with no "
                    f"request in flight ({book.in_flight} now); it covers seq {stored.seq}",
                    code="receipt_not_final",
                )
            self._ledger.set_closing(stored.channel_id)  # serve nothing more, on any replica
        provider_sig = sign_receipt(self._account, self.domain, stored.signed.receipt)
        return stored, provider_sig.signature

    # channels ------------------------------------------------------------------------------

    async def fresh(self, channel_id: bytes) -> ChannelState:
        """The channel as the chain has it now (the last known state during an outage)."""
        return await self._channel(channel_id, refresh=True)


def _is_zero(receipt: Receipt) -> bool:
    return (receipt.input_tokens, receipt.output_tokens, receipt.usage_root) == (0, 0, ZERO_ROOT)
