"""The gateway's channels: one request at a time each, opened on demand within a budget.

A channel serves one request at a time (the node extends credit for one unpaid record), so
concurrent requests to one provider need as many channels. ``lease`` hands out an idle open
channel of the provider and model whose deposit covers the request's worst case; it tops one
up, or opens a new one, when none does and the budget allows: the budget is the most the
gateway keeps deposited in open channels at once. Idle channels are closed cooperatively.

Everything here blocks (chain transactions, node calls): the app calls it in worker threads.
On-chain transactions are sent one at a time (one wallet, one nonce sequence).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from tallystick.protocol import ChannelStatus, cost_of

from .._chain import Offer
from .._client import Tallystick
from .._errors import ClientError
from .._transport import TallyTransport
from .._types import OpenChannel
from .._verify import VerifiedBill
from ._errors import GatewayError

__all__ = ["ChannelPool", "Lease"]

DEPOSIT_REQUESTS = 100  # a channel opened without --deposit covers this many such requests
QUARANTINE_S = 30.0  # a channel whose interrupted request cannot be resolved yet waits this long
WAIT_S = 60.0  # how long a request waits for a busy channel when the budget is spent


@dataclass
class Lease:
    """A channel held for one request, with the httpx client that verifies its bills."""

    channel: OpenChannel
    http: httpx.Client
    resolved: VerifiedBill | None = None  # an interrupted request resolved before this one


class ChannelPool:
    """Leases channels to requests; opens, tops up and closes them."""

    def __init__(
        self,
        client: Tallystick,
        inner: httpx.BaseTransport,
        *,
        budget: int,
        deposit: int | None = None,
        idle_close_s: float = 600.0,
        timeout: httpx.Timeout | float = 300.0,
    ) -> None:
        self.client = client
        self.inner = inner
        self.budget = budget
        self.deposit = deposit
        self.idle_close_s = idle_close_s
        self.timeout = timeout
        self._lock = threading.Condition()
        self._chain_lock = threading.Lock()
        self._busy: set[bytes] = set()
        self._quarantine: dict[bytes, float] = {}
        self._last_used: dict[bytes, float] = {}
        self._pending_deposits = 0  # opens and top-ups under way
        self._opening = 0  # opens under way: a channel they add to the store is theirs
        self._known: set[bytes] = set()  # channels a request may lease
        self._http: dict[bytes, tuple[OpenChannel, httpx.Client]] = {}
        # Called with each interrupted request's bill once resolved (the gateway charges it).
        self.on_resolved: Callable[[OpenChannel, VerifiedBill], None] | None = None

    # leasing

    def lease(self, offer: Offer, worst_cost: int) -> Lease:
        """A channel to ``offer``'s provider able to pay ``worst_cost``, held until released."""
        deadline = time.monotonic() + WAIT_S
        while True:
            with self._lock:
                channel = self._idle_channel(offer, worst_cost)
                if channel is not None:
                    self._busy.add(channel.channel_id)
                    return self._leased(channel)
                short = self._idle_short_channel(offer)
                amount = self._deposit_for(worst_cost, short)
                if self._deposited() + self._pending_deposits + amount <= self.budget:
                    self._pending_deposits += amount
                    if short is not None:
                        self._busy.add(short.channel_id)
                    else:
                        self._opening += 1
                    break
                if time.monotonic() > deadline:
                    raise GatewayError(
                        503,
                        f"every channel to {offer.provider} is busy and the gateway's budget "
                        f"({self.budget} base units in open channels) allows no other: retry "
                        "later or start the gateway with a larger --budget",
                        "budget_exhausted",
                    )
                self._lock.wait(timeout=1.0)
        return self._fund(offer, short, amount)

    def release(self, lease: Lease) -> None:
        with self._lock:
            self._busy.discard(lease.channel.channel_id)
            self._last_used[lease.channel.channel_id] = time.monotonic()
            self._lock.notify_all()

    def quarantine(self, lease: Lease) -> None:
        """Do not lease this channel for a while (its node is down or its state unsettled)."""
        with self._lock:
            self._quarantine[lease.channel.channel_id] = time.monotonic() + QUARANTINE_S
        self.release(lease)

    def refresh(self, lease: Lease, top_up: int) -> Lease:
        """Top up a leased channel by ``top_up`` (within the budget); the lease stays held."""
        with self._lock:
            if self._deposited() + self._pending_deposits + top_up > self.budget:
                raise GatewayError(
                    503,
                    f"channel {lease.channel.hex_id} needs {top_up} more and the gateway's budget "
                    f"({self.budget}) allows no more",
                    "budget_exhausted",
                )
            self._pending_deposits += top_up
        try:
            with self._chain_lock:
                info = self.client.channels.top_up(lease.channel.channel_id, top_up)
        finally:
            with self._lock:
                self._pending_deposits -= top_up
        return self._leased(info)

    # what the pool holds

    def channels(self, offer: Offer | None = None) -> list[OpenChannel]:
        """The store's open channels this gateway may use (this wallet, chain and escrow)."""
        chain = self.client.chain
        me = self.client.account.address.lower()
        return [
            c
            for c in self.client.store.channels(
                status=ChannelStatus.OPEN, model=offer.model if offer else None
            )
            if c.client.lower() == me
            and c.chain_id == chain.chain_id
            and c.escrow.lower() == chain.escrow.address.lower()
            and (offer is None or c.provider.lower() == offer.provider.lower())
        ]

    def busy(self, channel: OpenChannel) -> bool:
        """Whether a request holds the channel now."""
        with self._lock:
            return channel.channel_id in self._busy

    def spent(self, channel: OpenChannel) -> int:
        tally = self.client.store.tally(channel.channel_id)
        return cost_of(tally.input_tokens, tally.output_tokens, channel.prices)

    def close_idle(self) -> list[str]:
        """Close cooperatively every channel idle for ``idle_close_s``; the ids closed."""
        now = time.monotonic()
        closed: list[str] = []
        for channel in self.channels():
            with self._lock:
                # A channel first seen now (just opened, or opened by another process) is
                # not idle: its idle time starts here.
                last = self._last_used.setdefault(channel.channel_id, now)
                if channel.channel_id in self._busy or now - last < self.idle_close_s:
                    continue
                self._busy.add(channel.channel_id)  # no request may start on it now
            try:
                self.resolve_interrupted(channel)  # charged before the close folds it in
                with self._chain_lock:
                    self.client.channels.close_auto(channel.channel_id)
                closed.append(channel.hex_id)
            except ClientError:
                self._last_used[channel.channel_id] = now  # try again after another idle period
            finally:
                with self._lock:
                    self._busy.discard(channel.channel_id)
                    self._http.pop(channel.channel_id, None)
        return closed

    def close(self) -> None:
        for _, http in self._http.values():
            http.close()

    # internals (callers hold self._lock where noted)

    def _candidates(self, offer: Offer) -> list[OpenChannel]:
        # holds self._lock. A channel appears in the store before the open that made it has
        # marked it busy; while an open is under way, only channels known before are offered.
        channels = self.channels(offer)
        if self._opening == 0:
            self._known.update(c.channel_id for c in channels)
        return [c for c in channels if c.channel_id in self._known]

    def _idle_channel(self, offer: Offer, worst_cost: int) -> OpenChannel | None:
        # holds self._lock
        now = time.monotonic()
        for channel in self._candidates(offer):
            if (
                channel.channel_id in self._busy
                or self._quarantine.get(channel.channel_id, 0) > now
            ):
                continue
            if channel.deposit - self.spent(channel) >= worst_cost:
                return channel
        return None

    def _idle_short_channel(self, offer: Offer) -> OpenChannel | None:
        # holds self._lock: an idle channel too poor for the request, to top up
        now = time.monotonic()
        for channel in self._candidates(offer):
            if (
                channel.channel_id not in self._busy
                and self._quarantine.get(channel.channel_id, 0) <= now
            ):
                return channel
        return None

    def _deposit_for(self, worst_cost: int, short: OpenChannel | None) -> int:
        if short is not None:
            return max(worst_cost - (short.deposit - self.spent(short)), short.deposit)
        return max(self.deposit or worst_cost * DEPOSIT_REQUESTS, worst_cost, 1)

    def _deposited(self) -> int:
        # holds self._lock
        return sum(c.deposit for c in self.channels())

    def _fund(self, offer: Offer, short: OpenChannel | None, amount: int) -> Lease:
        info: OpenChannel | None = None
        try:
            with self._chain_lock:
                if short is not None:
                    info = self.client.channels.top_up(short.channel_id, amount)
                else:
                    info = self.client.channels.open(offer.model, amount, offer.provider)
        finally:
            with self._lock:
                # In one step with the bookkeeping: the new channel is in the store already,
                # and no other request may lease it before this one holds it.
                self._pending_deposits -= amount
                if short is None:
                    self._opening -= 1
                if info is not None:
                    self._known.add(info.channel_id)
                    self._busy.add(info.channel_id)
                    self._last_used[info.channel_id] = time.monotonic()
                elif short is not None:
                    self._busy.discard(short.channel_id)
                self._lock.notify_all()
        return self._leased(info)

    def _leased(self, channel: OpenChannel) -> Lease:
        with self._lock:
            return self._leased_locked(channel)

    def _leased_locked(self, channel: OpenChannel) -> Lease:
        held = self._http.get(channel.channel_id)
        if held is None or held[0] != channel:
            # The SDK's verifying transport on the channel as it is now (deposit after a top-up).
            transport = TallyTransport(self.client.biller, channel, self.inner)
            http = httpx.Client(transport=transport, timeout=self.timeout)
            self._http[channel.channel_id] = (channel, http)
            if held is not None:
                held[1].close()
            held = (channel, http)
        return Lease(channel, held[1])

    def resolve_interrupted(self, channel: OpenChannel) -> VerifiedBill | None:
        """Settle the channel's interrupted request, if any (before it serves or closes)."""
        if self.client.store.pending(channel.channel_id) is None:
            return None
        with self.client.biller.locked(channel):  # never beside a request in flight
            bill = self.client.biller.resolve_pending(channel)
        if bill is not None and self.on_resolved is not None:
            self.on_resolved(channel, bill)
        return bill
