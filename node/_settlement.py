"""The settlement worker (§9): claims countersigned receipts with ``claimMany``.

It claims when the unclaimed value of a payment token reaches its ``min_claim`` (default one
whole token for an ERC-20; for ETH, more than ``claim_gas_multiple`` x the estimated gas
cost), checked every ``settle_interval`` seconds, on demand (``settle(force=True)``), and at once
for a channel whose client requested a close (it watches ``CloseRequested``) or replaced the
session key that signed the channel's latest receipt (it watches ``SessionKeyRetired``: such
a receipt pays only until the key's grace ends, §7.3), so no receipt is lost to a deadline.
A pass splits its receipts into several ``claimMany`` transactions of at most
``settle_max_gas_per_tx`` (estimated) so each fits in a block, the most urgent first.
Idempotent across restarts: candidates come from the ledger and are compared with the totals
the escrow has already claimed.

Replicas sharing one ledger settle once per provider: the background loop works only while
it holds the ledger's ``settlement`` lease (renewed every poll, lapsing ``replica_ttl``
seconds after its holder dies, when another replica's loop takes it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid

from tallystick.protocol import (
    ETH,
    ChainError,
    ChannelState,
    ChannelStatus,
    ContractError,
    InvalidSignature,
    format_amount,
    recover_receipt_signer,
    token_info,
)

from ._chain import ChainView, ChannelCache, ClaimOutcome
from ._claim_plan import Candidate, claimable, plan_batches, receipt_value
from ._ledger import ClaimItem, LedgerStore
from ._metrics import NodeMetrics
from ._settings import Settings
from ._types import StoredReceipt

__all__ = ["SettlementWorker"]

log = logging.getLogger("tallystick.node.settlement")

SCAN_KEY = "close_scan_block"
FINALITY_WINDOW = 50  # the most recent claims whose finality each loop checks
LEASE = "settlement"
KEY_SCAN_KEY = "key_scan_block"
RETIRED_KEY = "retired_session_keys"  # JSON {channel hex: {key: validUntil}}, pruned once past


class SettlementWorker:
    """Background claims; ``start()`` on app startup, ``stop()`` on shutdown."""

    def __init__(
        self,
        *,
        chain: ChainView,
        ledger: LedgerStore,
        cache: ChannelCache,
        metrics: NodeMetrics,
        settings: Settings,
        owner: str | None = None,
    ) -> None:
        self._owner = owner or uuid.uuid4().hex
        self._lease_ttl = settings.replica_ttl
        self._confirmations = settings.confirmations
        self._leader = False
        self._chain = chain
        self._ledger = ledger
        self._cache = cache
        self._metrics = metrics
        self._interval = settings.settle_interval
        self._poll = settings.poll_interval
        self._multiple = settings.claim_gas_multiple
        self._max_backoff = settings.settle_max_backoff
        self._max_gas = settings.settle_max_gas_per_tx
        self._min_claims = dict(settings.min_claim)  # and each ERC-20's default, once read
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="settlement")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):  # a dead ledger lets the lease lapse instead
            self._ledger.release_lease(LEASE, self._owner)

    def holds_lease(self) -> bool:
        """Take or renew the settlement lease; False while another replica holds it."""
        held = self._ledger.acquire_lease(LEASE, self._owner, time.time(), self._lease_ttl)
        if held != self._leader:
            self._leader = held
            log.info("settlement lease %s by replica %s", "taken" if held else "lost", self._owner)
        return held

    async def _run(self) -> None:
        next_settle = time.monotonic() + self._interval
        delay = self._poll
        while True:
            try:
                if not self.holds_lease():
                    await asyncio.sleep(self._poll)
                    continue
                await self.check_finality()
                urgent = await self.scan_close_requests() + await self.scan_key_retirements()
                due = time.monotonic() >= next_settle or self._wake.is_set()
                self._wake.clear()
                if urgent or due:
                    await self.settle(force=False)
                    next_settle = time.monotonic() + self._interval
                delay = self._poll
            except ChainError as exc:
                delay = min(delay * 2, self._max_backoff)
                log.warning("settlement: chain error (%s); retrying in %.0fs", exc, delay)
            except Exception:
                delay = min(delay * 2, self._max_backoff)
                log.exception("settlement: unexpected error; retrying in %.0fs", delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)

    async def check_finality(self) -> None:
        """Mark mined claims "final" once ``confirmations`` deep, "reorged" if the chain lost them.

        Bookkeeping only: what gets claimed always follows the chain's claimed totals, so a
        reorged claim's receipts are candidates again without anything read from here.
        """
        for row in self._ledger.claims(limit=FINALITY_WINDOW):
            if row.status != "confirmed" or row.tx_hash is None:
                continue
            depth = await self._chain.tx_confirmations(row.tx_hash)
            if depth is None:
                log.warning(
                    "settlement: claim %s was dropped by a reorg; claiming again", row.tx_hash
                )
                self._ledger.set_claim_status(row.claim_id, "reorged")
                self._metrics.claims.labels("reorged").inc()
                self._wake.set()  # claim those receipts again on the next pass
            elif depth >= max(self._confirmations, 1):
                self._ledger.set_claim_status(row.claim_id, "final")

    async def scan_close_requests(self) -> int:
        """Apply new ``CloseRequested`` events; the number of our channels now closing."""
        start = int(self._ledger.get_meta(SCAN_KEY) or 0)
        events, next_block = await self._chain.close_requests(start)
        for event in events:
            log.info(
                "close requested: channel=0x%s closes_at=%d",
                event.channel_id.hex(),
                event.closes_at,
            )
            self._cache.mark_closing(event.channel_id, event.closes_at)
        self._ledger.set_meta(SCAN_KEY, str(next_block))
        return len(events)

    async def scan_key_retirements(self) -> int:
        """Record new ``SessionKeyRetired`` events; how many (each may make a claim urgent)."""
        start = int(self._ledger.get_meta(KEY_SCAN_KEY) or 0)
        events, next_block = await self._chain.key_retirements(start)
        retired = self._retired()
        for event in events:
            log.info(
                "session key retired: channel=0x%s key=%s valid_until=%d",
                event.channel_id.hex(),
                event.key,
                event.valid_until,
            )
            retired.setdefault(event.channel_id.hex(), {})[event.key] = event.valid_until
        for channel_id in {e.channel_id for e in events}:
            # The gate must stop taking receipts from the old key now, not when the cache expires.
            with contextlib.suppress(ChainError):
                await self._cache.get(channel_id, refresh=True)
        if events:
            self._ledger.set_meta(RETIRED_KEY, json.dumps(retired, sort_keys=True))
        self._ledger.set_meta(KEY_SCAN_KEY, str(next_block))
        return len(events)

    def _retired(self) -> dict[str, dict[str, int]]:
        raw = self._ledger.get_meta(RETIRED_KEY)
        return dict(json.loads(raw)) if raw else {}

    async def candidates(self) -> list[Candidate]:
        """Receipts the escrow would still pay for, with fresh on-chain state (batched reads)."""
        latest = self._ledger.latest_receipts()
        if not latest:
            return []
        now = await self._chain.timestamp()
        states = await self._chain.read_channels([r.channel_id for r in latest])
        self._cache.put_many(states)
        retired = self._prune_retired(states)
        out = []
        for stored in latest:
            info = states.get(stored.channel_id)
            if info is None or not claimable(stored, info, now):
                continue
            key_deadline = self._key_deadline(stored, info, retired)
            if key_deadline is not None and now >= key_deadline:
                log.warning(
                    "settlement: receipt of channel 0x%s was signed by a session key whose grace "
                    "ended at %d; the escrow no longer pays it",
                    stored.channel_id.hex(),
                    key_deadline,
                )
                continue
            out.append(Candidate(stored, info, receipt_value(stored, info), key_deadline))
        return out

    def _prune_retired(self, states: dict[bytes, ChannelState | None]) -> dict[str, dict[str, int]]:
        # Kept until the channel closes: past its grace a retired key's receipt is one the
        # escrow refuses, and the worker must go on knowing that.
        retired = self._retired()
        closed = {
            cid.hex()
            for cid, info in states.items()
            if info is not None and info.status == ChannelStatus.CLOSED
        }
        kept = {cid: keys for cid, keys in retired.items() if cid not in closed}
        if kept != retired:
            self._ledger.set_meta(RETIRED_KEY, json.dumps(kept, sort_keys=True))
        return kept

    def _key_deadline(
        self, stored: StoredReceipt, info: ChannelState, retired: dict[str, dict[str, int]]
    ) -> int | None:
        # Only a channel with a live retirement costs a signature recovery (~0.3 ms).
        keys = retired.get(stored.channel_id.hex())
        if not keys:
            return None
        try:
            signer = recover_receipt_signer(self._chain.domain, stored.signed)
        except InvalidSignature:
            return None
        if info.may_sign(signer):
            return None  # the client or the current key: no deadline but the channel's own
        return keys.get(signer)

    async def settle(self, *, force: bool) -> list[ClaimOutcome]:
        """Claim the candidates in ``claimMany`` batches that fit ``settle_max_gas_per_tx``.

        Batches go out most urgent first (closest ``closesAt``, then highest value); each is
        sent when worth its gas (always when ``force`` or when it holds a closing channel).
        A chain error stops the pass (raised); batches already mined stay claimed.
        """
        async with self._lock:
            found = await self.candidates()
            outcomes = []
            for batch in plan_batches(found, self._max_gas):
                urgent = any(c.urgent for c in batch)
                if force or urgent or await self._worth_it(batch):
                    outcomes.append(await self._claim(batch))
            if outcomes:
                await self._refresh_claimed([c for o in outcomes for c in o.claimed])
            return outcomes

    async def _worth_it(self, found: list[Candidate]) -> bool:
        """Whether the batch holds enough of some payment token to be worth its claim.

        Per token: at least its ``min_claim`` (default one whole token for an ERC-20); ETH
        without a setting: more than ``claim_gas_multiple`` x the batch's gas cost (gas is
        paid in ETH, so only ETH can be compared with it).
        """
        by_token: dict[str, int] = {}
        for c in found:
            by_token[c.channel.token.lower()] = by_token.get(c.channel.token.lower(), 0) + c.value
        waiting = []
        for token, value in sorted(by_token.items()):
            minimum = await self._min_claim(token)
            if minimum is None:
                gas_cost = await self._chain.claim_cost_estimate([c.receipt.signed for c in found])
                if value > self._multiple * gas_cost:
                    return True
                waiting.append(
                    f"{await self._money(token, value)} < {self._multiple:g} x gas cost "
                    f"{await self._money(token, gas_cost)}"
                )
            elif value >= minimum and value > 0:
                return True
            else:
                waiting.append(
                    f"{await self._money(token, value)} < min claim "
                    f"{await self._money(token, minimum)}"
                )
        log.info("settlement: waiting: %s unclaimed", "; ".join(waiting))
        return False

    async def _min_claim(self, token: str) -> int | None:
        """The token's threshold in base units; None for ETH left to the gas rule."""
        if token in self._min_claims:
            return self._min_claims[token]
        if token == ETH:
            return None
        try:
            decimals = await self._chain.token_decimals(token)
        except ContractError as exc:
            log.warning(
                "settlement: token %s has no decimals() (%s); claiming any amount of it "
                "(set --min-claim %s=AMOUNT)",
                token,
                exc,
                token,
            )
            decimals = 0
        self._min_claims[token] = 10**decimals
        return self._min_claims[token]

    async def _money(self, token: str, amount: int) -> str:
        """``amount`` of ``token`` in its own units (base units before a fake chain)."""
        return await asyncio.to_thread(_money, self._chain, token, amount)

    async def _claim(self, found: list[Candidate]) -> ClaimOutcome:
        items = [
            ClaimItem(
                c.receipt.channel_id,
                c.receipt.seq,
                c.receipt.signed.receipt.input_tokens,
                c.receipt.signed.receipt.output_tokens,
                "pending",
            )
            for c in found
        ]
        claim_id = self._ledger.add_claim(items)
        try:
            outcome = await self._chain.claim_many([c.receipt.signed for c in found])
        except ChainError as exc:
            self._ledger.finish_claim(claim_id, status="failed", error=str(exc))
            self._metrics.claims.labels("failed").inc()
            raise
        self._ledger.finish_claim(
            claim_id,
            status="confirmed",
            tx_hash=outcome.tx_hash,
            gas_used=outcome.gas_used,
            amount=outcome.amount,
            skipped=outcome.skipped,
        )
        self._metrics.claims.labels("confirmed").inc()
        self._metrics.receipts_skipped.inc(len(outcome.skipped))
        for c in found:
            paid = outcome.claimed.get(c.receipt.channel_id, 0)
            self._metrics.earnings_claimed.labels(c.channel.token).inc(paid)
        for channel_id, reason in outcome.skipped.items():
            log.warning("settlement: receipt of channel 0x%s skipped: %s", channel_id.hex(), reason)
        log.info(
            "settlement: claimMany %s claimed %s over %d receipt(s), gas %d",
            outcome.tx_hash,
            await asyncio.to_thread(_amounts, found, outcome, self._chain),
            len(found),
            outcome.gas_used,
        )
        return outcome

    async def _refresh_claimed(self, channel_ids: list[bytes]) -> None:
        try:
            states = await self._chain.read_channels(channel_ids)
        except ChainError as exc:  # the claims are mined; the next pass reads them again
            log.warning("settlement: cannot re-read claimed channels: %s", exc)
            return
        self._cache.put_many(states)
        self.refresh_unclaimed_metric()

    def refresh_unclaimed_metric(self) -> None:
        """Countersigned but unclaimed value per token, from the ledger's channel cache."""
        totals: dict[str, int] = {}
        for stored in self._ledger.latest_receipts():
            info = self._ledger.get_channel(stored.channel_id)
            if info is not None and info.status in (ChannelStatus.OPEN, ChannelStatus.CLOSING):
                totals[info.token] = totals.get(info.token, 0) + receipt_value(stored, info)
        for token, value in totals.items():
            self._metrics.earnings_unclaimed.labels(token).set(value)


def _amounts(found: list[Candidate], outcome: ClaimOutcome, chain: ChainView) -> str:
    """What a claim paid, per token, in the token's units: ``0.0086 USDC (0x9fE4…), 1.2 ETH``."""
    paid: dict[str, int] = {}
    for c in found:
        token = c.channel.token.lower()
        paid[token] = paid.get(token, 0) + outcome.claimed.get(c.receipt.channel_id, 0)
    return ", ".join(_money(chain, t, v) for t, v in sorted(paid.items())) or "nothing"


def _money(chain: ChainView, token: str, amount: int) -> str:
    w3 = getattr(getattr(chain, "escrow", None), "w3", None)  # a unit test's fake: base units
    if w3 is None:
        return f"{_token_name(token)} {amount}"
    info = token_info(w3, token)
    return format_amount(amount, info) + ("" if info.is_eth else f" ({info.address})")


def _token_name(token: str) -> str:
    return "ETH" if token == ETH else token
