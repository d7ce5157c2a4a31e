"""One request through the gateway: plan, route, lease a channel, send, fail over, bill.

The blocking half (``Gateway.start``, ``Gateway.finish``) runs in worker threads and uses the
SDK as any program would: a ``TallyTransport`` per channel, so every bill is verified and
countersigned exactly as ``client.chat.completions.create`` does, and a ``BillingDispute``
stores its evidence. The failover rule (docs/gateway.md): a provider that is down or refuses
before the first token is passed over for the next one; after the first token the caller
gets an error event, and the interrupted request is billed by the SDK's rule (§6 of
docs/protocol.md) on the channel's next request, to the same key.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from tallystick.protocol import TallystickError

from .._chain import Chain, Offer
from .._client import Tallystick
from .._discovery import find_offers
from .._errors import BillingDispute, NodeError, NodeUnavailable
from .._node import node_error, send
from .._transport import BILL_EXTENSION, BillSlot
from .._types import OpenChannel
from .._verify import VerifiedBill
from .._wallet import Wallet
from ._errors import GatewayError
from ._ledger import ApiKey, Ledger, Spend
from ._limits import Limits, Reservation
from ._pool import ChannelPool, Lease
from ._routing import Candidate, Router, RouteRequest
from ._settings import GatewaySettings

__all__ = ["Failover", "Gateway", "Plan", "Started", "open_gateway"]

PATHS = {"chat": "/v1/chat/completions", "text": "/v1/completions"}
_CALLER_ERRORS = frozenset({400, 413, 422})  # another provider would refuse it too
CONNECT_TIMEOUT_S = 5.0


class Failover(Exception):
    """This provider cannot serve the request now; try the next one."""


@dataclass
class Plan:
    """A request as the gateway will send it, and what routing needs to know about it."""

    kind: str  # "chat" or "text"
    body: dict[str, Any]  # forwarded to the node (routing hints removed)
    route: RouteRequest
    stream: bool


@dataclass
class Started:
    """A request a provider has begun to answer (streams: up to the first token)."""

    plan: Plan
    key: ApiKey
    candidate: Candidate
    lease: Lease
    response: httpx.Response
    sent_at: float
    first_token_at: float
    head: list[bytes] = field(default_factory=list)  # events up to the first token
    events: Iterator[bytes] | None = None  # the rest of the stream

    @property
    def provider(self) -> str:
        return self.candidate.listing.provider


class Gateway:
    """The wallet, the channels, the router, the keys: everything a request needs."""

    def __init__(
        self,
        client: Tallystick,
        inner: httpx.BaseTransport,
        ledger: Ledger,
        settings: GatewaySettings,
    ) -> None:
        self.client = client
        self.ledger = ledger
        self.settings = settings
        self.router = Router(settings.latency_weight)
        self.limits = Limits(ledger)
        self.pool = ChannelPool(
            client,
            inner,
            budget=settings.budget,
            deposit=settings.deposit,
            idle_close_s=settings.idle_close_s,
            timeout=_timeout(settings),
        )
        self.pool.on_resolved = self._charge_interrupted
        self._offers: tuple[float, list[Offer]] | None = None
        self._offers_lock = threading.Lock()
        self._mark_disputed()

    def close(self) -> None:
        self.pool.close()
        self.ledger.close()
        self.client.close()

    # discovery

    def offers(self, *, fresh: bool = False) -> list[Offer]:
        """Active listings of every model, cached for ``offers_ttl_s``."""
        with self._offers_lock:
            now = time.monotonic()
            if fresh or self._offers is None or now - self._offers[0] > self.settings.offers_ttl_s:
                self._offers = (now, find_offers(self.client.chain))
            return self._offers[1]

    def models(self) -> list[dict[str, Any]]:
        """``/v1/models``: every listed model, its providers and prices (cheapest first)."""
        by_model: dict[str, list[Offer]] = {}
        for offer in self.offers():
            by_model.setdefault(offer.model, []).append(offer)
        return [
            _model_entry(model, offers, self.settings.token) for model, offers in by_model.items()
        ]

    def rank(self, plan: Plan) -> list[Candidate]:
        offers = self.offers()
        ranked = self.router.rank(offers, plan.route)
        if ranked:
            return ranked
        listed = [o for o in offers if o.model == plan.route.model]
        if not listed:
            raise GatewayError(
                404,
                f"no provider lists the model {plan.route.model!r} (GET /v1/models lists them)",
                "model_not_found",
                "model",
            )
        raise GatewayError(
            503,
            f"no provider of {plan.route.model!r} fits this request: "
            + _why_none(listed, plan.route, self.router),
            "no_provider",
            "model",
        )

    # the blocking half: runs in worker threads

    def start(self, plan: Plan, key: ApiKey, candidate: Candidate) -> Started:
        """Send the request to ``candidate``; return once it answers (streams: first token)."""
        try:
            lease = self.pool.lease(candidate.listing, candidate.cost)
        except (GatewayError, TallystickError) as exc:
            # No channel to this provider now (budget spent, open refused, node mismatch).
            if not isinstance(exc, GatewayError):
                self.router.failed(candidate.listing.provider, str(exc))
            raise Failover(str(exc)) from exc
        try:
            self._resolve_interrupted(lease)
            return self._send(plan, key, candidate, lease, topped_up=False)
        except Failover:
            raise
        except BaseException:
            self.pool.release(lease)
            raise

    def _send(
        self, plan: Plan, key: ApiKey, candidate: Candidate, lease: Lease, *, topped_up: bool
    ) -> Started:
        channel = lease.channel
        url = channel.endpoint.rstrip("/") + PATHS[plan.kind]
        self.ledger.begin(
            channel.hex_id, key.id, plan.route.model, channel.provider, plan.route.token
        )
        sent_at = time.monotonic()
        try:
            request = lease.http.build_request("POST", url, json=plan.body)
            response = send(lease.http, request, stream=True)
        except NodeUnavailable as exc:
            self.ledger.end(channel.hex_id)
            raise self._failover(lease, candidate, str(exc), quarantine=True) from exc
        if response.status_code >= 400:
            self.ledger.end(channel.hex_id)
            error = _read_error(response)
            if error.code == "insufficient_deposit" and not topped_up:
                lease = self.pool.refresh(lease, max(candidate.cost, channel.deposit))
                return self._send(plan, key, candidate, lease, topped_up=True)
            if error.status in _CALLER_ERRORS:
                raise GatewayError(error.status, error.message, error.code or "invalid_request")
            raise self._failover(lease, candidate, str(error), quarantine=False)
        started = Started(plan, key, candidate, lease, response, sent_at, sent_at)
        try:
            if plan.stream:
                self._read_head(started)
            else:
                response.read()  # the transport verifies and countersigns here
        except BillingDispute as exc:
            # Nothing reached the caller: it gets another provider, this one no more requests.
            self.router.disputed(channel.provider, str(exc))
            with contextlib.suppress(Exception):
                response.close()
            raise self._failover(lease, candidate, str(exc), quarantine=False) from exc
        except (httpx.HTTPError, TallystickError) as exc:
            with contextlib.suppress(Exception):
                response.close()  # the SDK keeps what arrived; the next request resolves it
            raise self._failover(lease, candidate, str(exc), quarantine=True) from exc
        started.first_token_at = time.monotonic() if not plan.stream else started.first_token_at
        return started

    def _read_head(self, started: Started) -> None:
        events = started.response.iter_bytes()
        for event in events:
            started.head.append(event)
            if _has_token(event, started.plan.kind):
                started.first_token_at = time.monotonic()
                break
        else:
            started.first_token_at = time.monotonic()  # ended without a token: all is in head
        started.events = events

    def finish(self, started: Started) -> VerifiedBill | None:
        """The answer ended: charge its verified bill to the key, update the provider's stats."""
        bill = _bill(started.response)
        channel = started.lease.channel
        if bill is not None:
            record = bill.record.record
            self.ledger.record(
                Spend(
                    started.key.id,
                    started.plan.route.model,
                    channel.provider,
                    channel.hex_id,
                    record.seq,
                    channel.token,
                    record.prompt_tokens,
                    record.completion_tokens,
                    bill.cost,
                )
            )
            gen_s = time.monotonic() - started.first_token_at
            ttft = started.first_token_at - started.sent_at
            self.router.succeeded(channel.provider, ttft, record.completion_tokens, gen_s)
        return bill

    def abort(self, started: Started, reason: str) -> None:
        """The answer broke after its first token: the provider is marked, the channel kept.

        The request stays in flight in the ledger: the SDK resolves it from the node's record
        before the channel serves again, and ``_resolve_interrupted`` charges it to the key.
        """
        with contextlib.suppress(Exception):
            started.response.close()
        if reason.startswith("billing dispute"):
            self.router.disputed(started.provider, reason)
        else:
            self.router.failed(started.provider, reason)

    def done(self, started: Started) -> None:
        with contextlib.suppress(Exception):
            started.response.close()
        self.pool.release(started.lease)

    def _resolve_interrupted(self, lease: Lease) -> None:
        channel = lease.channel
        try:
            self.pool.resolve_interrupted(channel)  # charged by _charge_interrupted
        except BillingDispute as exc:
            self.router.disputed(channel.provider, str(exc))
            self.ledger.end(channel.hex_id)
            raise self._failover(lease, None, str(exc), quarantine=True) from exc
        except TallystickError as exc:
            raise self._failover(lease, None, str(exc), quarantine=True) from exc

    def _charge_interrupted(self, channel: OpenChannel, bill: VerifiedBill) -> None:
        """An interrupted request's bill, resolved by the SDK: charge the key that sent it."""
        owner = self.ledger.inflight(channel.hex_id)
        if owner is None:
            return  # sent by another program on this store
        key_id, model, provider, token = owner
        record = bill.record.record
        self.ledger.record(
            Spend(
                key_id,
                model,
                provider,
                channel.hex_id,
                record.seq,
                token,
                record.prompt_tokens,
                record.completion_tokens,
                bill.cost,
            )
        )

    def _failover(
        self, lease: Lease, candidate: Candidate | None, reason: str, *, quarantine: bool
    ) -> Failover:
        if candidate is not None and not reason.startswith("billing dispute"):
            self.router.failed(candidate.listing.provider, reason)
        if quarantine:
            self.pool.quarantine(lease)
        else:
            self.pool.release(lease)
        return Failover(reason)

    def _mark_disputed(self) -> None:
        for dispute in self.client.store.disputes():
            with contextlib.suppress(TallystickError):
                channel = self.client.store.channel(dispute.channel_id)
                self.router.disputed(channel.provider, f"dispute {dispute.id} in the store")

    # admission

    def admit(self, key: ApiKey, plan: Plan, ranked: list[Candidate]) -> Reservation:
        tokens = plan.route.prompt_tokens + plan.route.max_tokens
        worst = max(c.cost for c in ranked)  # failover may land on the dearest
        return self.limits.admit(key, tokens, worst)


def open_gateway(
    wallet: Wallet,
    store: str | Path,
    chain: Chain,
    settings: GatewaySettings,
    *,
    transport: httpx.BaseTransport | None = None,
) -> Gateway:
    """A gateway paying from ``wallet``, keeping channels, receipts and spend in ``store``."""
    inner = transport or httpx.HTTPTransport(retries=1)
    client = Tallystick(wallet, store, chain=chain, transport=inner, timeout=_timeout(settings))
    return Gateway(client, inner, Ledger(client.store.path), settings)


def _timeout(settings: GatewaySettings) -> httpx.Timeout:
    # A node that does not even accept the connection is failed over within seconds.
    return httpx.Timeout(settings.request_timeout_s, connect=CONNECT_TIMEOUT_S)


def _read_error(response: httpx.Response) -> NodeError:
    try:
        return node_error(response)
    except NodeError as exc:
        return exc
    finally:
        response.close()


def _has_token(event: bytes, kind: str) -> bool:
    for line in event.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            return False
        with contextlib.suppress(ValueError):
            chunk = json.loads(data)
            for choice in chunk.get("choices") or []:
                part = (
                    choice.get("text")
                    if kind == "text"
                    else (choice.get("delta") or {}).get("content")
                )
                if part:
                    return True
    return False


def _bill(response: httpx.Response) -> VerifiedBill | None:
    slot = response.extensions.get(BILL_EXTENSION)
    return slot.bill if isinstance(slot, BillSlot) else None


def _model_entry(model: str, offers: list[Offer], token: str) -> dict[str, Any]:
    usable = [o for o in offers if o.token.lower() == token.lower()]
    best = min(usable or offers, key=lambda o: (o.prices.output_per_m, o.prices.input_per_m))
    return {
        "id": model,
        "object": "model",
        "created": 0,
        "owned_by": "tallystick",
        "context_length": max(o.context_length for o in offers),
        "pricing": {
            "input_per_million": best.prices.input_per_m,
            "output_per_million": best.prices.output_per_m,
            "token": best.token,
        },
        "providers": [
            {
                "provider": o.provider,
                "endpoint": o.endpoint,
                "input_per_million": o.prices.input_per_m,
                "output_per_million": o.prices.output_per_m,
                "token": o.token,
                "context_length": o.context_length,
                "routable": o.token.lower() == token.lower(),
            }
            for o in offers
        ],
    }


def _why_none(listed: list[Offer], route: RouteRequest, router: Router) -> str:
    reasons = []
    for o in listed:
        if o.token.lower() != route.token.lower():
            reasons.append(f"{o.provider} is paid in {o.token}, not the gateway's {route.token}")
        elif route.pin is not None and o.provider.lower() != route.pin.lower():
            continue
        elif route.max_input_price is not None and o.prices.input_per_m > route.max_input_price:
            reasons.append(f"{o.provider} asks {o.prices.input_per_m}/M input, above your cap")
        elif route.max_output_price is not None and o.prices.output_per_m > route.max_output_price:
            reasons.append(f"{o.provider} asks {o.prices.output_per_m}/M output, above your cap")
        elif router.health(o.provider).disputed:
            reasons.append(f"{o.provider} has a billing dispute")
    if route.pin is not None and not any(o.provider.lower() == route.pin.lower() for o in listed):
        reasons.append(f"the pinned provider {route.pin} does not list it")
    return "; ".join(reasons) or "every provider was excluded"
