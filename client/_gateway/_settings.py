"""``GatewaySettings``: the gateway's options, read once (CLI flags or ``TALLYSTICK_*``)."""

from __future__ import annotations

from dataclasses import dataclass

from .._chain import ETH

__all__ = ["GatewaySettings"]


@dataclass(frozen=True)
class GatewaySettings:
    """How the gateway serves, spends and routes.

    ``budget`` is the most it keeps deposited in open channels at once and ``deposit`` a new
    channel's deposit (default: 100 times the worst case of the request that opens it), both
    in base units of ``token``, the payment token it routes to (ETH by default).
    """

    budget: int
    token: str = ETH
    deposit: int | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    idle_close_s: float = 600.0
    default_max_tokens: int = 256
    latency_weight: float = 1.0
    offers_ttl_s: float = 30.0
    request_timeout_s: float = 300.0
    max_body_bytes: int = 4 << 20

    def __post_init__(self) -> None:
        if self.budget <= 0:
            raise ValueError("the budget must be a positive amount (base units)")
        if self.deposit is not None and not 0 < self.deposit <= self.budget:
            raise ValueError("the deposit must be positive and at most the budget")
        if self.default_max_tokens < 1:
            raise ValueError("the default max_tokens must be at least 1")
        if self.latency_weight < 0:
            raise ValueError("the latency weight must be at least 0")
