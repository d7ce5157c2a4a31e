"""Routing: which provider serves a request, in what order the others are tried.

For each listing of the model (in the gateway's payment token, within the caller's price
caps, not disputed, not pinned away) the score is

    score = cost / cheapest_cost + latency_weight * time / fastest_time

with ``cost = cost_of(prompt_tokens, max_tokens, prices)`` (the request's expected tokens at
that provider's snapshot prices) and ``time = ttft + max_tokens / tokens_per_s`` from the
provider's recent requests (moving averages; an unmeasured provider gets the mean of the
measured ones, so it is tried and measured). Lowest score first; providers whose circuit is
open (recent failures) go after every healthy one. docs/gateway.md explains the choice.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from tallystick.protocol import cost_of

from .._chain import Offer

__all__ = ["Candidate", "Health", "RouteRequest", "Router"]

EWMA_ALPHA = 0.3  # weight of the newest measurement
DEFAULT_TTFT_S = 0.5  # before any provider of the model was measured
DEFAULT_TPS = 20.0
BACKOFF_S = 2.0  # first circuit-open period; doubles per consecutive failure
MAX_BACKOFF_S = 60.0


@dataclass(frozen=True)
class RouteRequest:
    """What routing needs to know about one request."""

    model: str
    prompt_tokens: int  # an estimate
    max_tokens: int
    token: str  # the gateway's payment token
    pin: str | None = None  # only this provider
    max_input_price: int | None = None  # per million tokens, base units
    max_output_price: int | None = None


@dataclass(frozen=True)
class Candidate:
    """A listing in the order routing tries it, with what its score was made of."""

    listing: Offer
    cost: int
    time_s: float
    score: float
    healthy: bool


@dataclass
class Health:
    """What the gateway measured of one provider."""

    ttft_s: float | None = None
    tokens_per_s: float | None = None
    requests: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    down_until: float = 0.0
    disputed: bool = False
    last_error: str = ""
    samples: list[float] = field(default_factory=list)  # recent TTFTs, for the status view


class Router:
    """Scores listings and keeps per-provider health; thread-safe."""

    def __init__(self, latency_weight: float = 1.0, clock: object = time.monotonic) -> None:
        self.latency_weight = latency_weight
        self._clock = clock
        self._lock = threading.Lock()
        self._health: dict[str, Health] = {}

    def _now(self) -> float:
        return float(self._clock())  # type: ignore[operator]

    def health(self, provider: str) -> Health:
        with self._lock:
            return self._health.setdefault(provider.lower(), Health())

    def rank(self, offers: list[Offer], req: RouteRequest) -> list[Candidate]:
        """The eligible offers for ``req``, best first."""
        eligible = [o for o in offers if self._eligible(o, req)]
        if not eligible:
            return []
        now = self._now()
        costs = [cost_of(req.prompt_tokens, req.max_tokens, o.prices) for o in eligible]
        times = [self._expected_time(o.provider, req.max_tokens) for o in eligible]
        cheapest = max(min(costs), 1)
        fastest = max(min(times), 1e-3)
        ranked = [
            Candidate(
                o,
                c,
                t,
                c / cheapest + self.latency_weight * t / fastest,
                self.health(o.provider).down_until <= now,
            )
            for o, c, t in zip(eligible, costs, times, strict=True)
        ]
        return sorted(ranked, key=lambda c: (not c.healthy, c.score, c.cost))

    def _eligible(self, offer: Offer, req: RouteRequest) -> bool:
        if offer.model != req.model or not offer.active:
            return False
        if offer.token.lower() != req.token.lower():
            return False
        if req.pin is not None and offer.provider.lower() != req.pin.lower():
            return False
        if req.max_input_price is not None and offer.prices.input_per_m > req.max_input_price:
            return False
        if req.max_output_price is not None and offer.prices.output_per_m > req.max_output_price:
            return False
        return not self.health(offer.provider).disputed

    def _expected_time(self, provider: str, max_tokens: int) -> float:
        h = self.health(provider)
        ttft, tps = h.ttft_s, h.tokens_per_s
        if ttft is None or tps is None:
            ttft, tps = self._means()
        return ttft + max_tokens / max(tps, 1e-3)

    def _means(self) -> tuple[float, float]:
        with self._lock:
            measured = [h for h in self._health.values() if h.ttft_s is not None]
            ttfts = [h.ttft_s for h in measured if h.ttft_s is not None]
            tpss = [h.tokens_per_s for h in measured if h.tokens_per_s is not None]
        ttft = sum(ttfts) / len(ttfts) if ttfts else DEFAULT_TTFT_S
        tps = sum(tpss) / len(tpss) if tpss else DEFAULT_TPS
        return ttft, tps

    # what happened

    def succeeded(self, provider: str, ttft_s: float, tokens: int, gen_s: float) -> None:
        """A verified request: update the moving averages and close the circuit."""
        h = self.health(provider)
        with self._lock:
            h.requests += 1
            h.consecutive_failures = 0
            h.down_until = 0.0
            h.ttft_s = _ewma(h.ttft_s, ttft_s)
            if tokens > 1 and gen_s > 0:
                h.tokens_per_s = _ewma(h.tokens_per_s, (tokens - 1) / gen_s)
            h.samples = [*h.samples[-99:], ttft_s]

    def failed(self, provider: str, reason: str) -> None:
        """The provider was down or refused: open its circuit for a doubling back-off."""
        h = self.health(provider)
        with self._lock:
            h.requests += 1
            h.failures += 1
            h.consecutive_failures += 1
            h.last_error = reason
            backoff = min(BACKOFF_S * 2 ** (h.consecutive_failures - 1), MAX_BACKOFF_S)
            h.down_until = self._now() + backoff

    def disputed(self, provider: str, reason: str) -> None:
        """A bill of this provider failed verification: never route to it again."""
        h = self.health(provider)
        with self._lock:
            h.disputed = True
            h.last_error = reason


def _ewma(old: float | None, new: float) -> float:
    return new if old is None else (1 - EWMA_ALPHA) * old + EWMA_ALPHA * new
