"""Per-key limits: requests and tokens per minute (in memory), spend in total and per day.

Rate windows are the last 60 seconds, kept in memory (a restart forgets at most a minute).
Spend comes from the ledger on disk plus what requests in flight may still cost (their
worst case, reserved before the request is sent and released when its bill is recorded),
so concurrent requests cannot together overrun a key's budget.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

from ._errors import GatewayError
from ._ledger import ApiKey, Ledger, today

__all__ = ["Limits", "Reservation"]

WINDOW_S = 60.0


@dataclass
class _Window:
    events: deque[list[float]] = field(default_factory=deque)  # [time, tokens]

    def trim(self, now: float) -> None:
        while self.events and self.events[0][0] <= now - WINDOW_S:
            self.events.popleft()

    def requests(self) -> int:
        return len(self.events)

    def tokens(self) -> int:
        return int(sum(e[1] for e in self.events))

    def reset_in(self, now: float) -> float:
        return max(0.0, self.events[0][0] + WINDOW_S - now) if self.events else 0.0


@dataclass
class Reservation:
    """A request's worst-case cost, held against its key's budget while it is in flight."""

    key_id: str
    amount: int
    entry: list[float]  # its [time, tokens] in the rate window, corrected when the bill is in


class Limits:
    """Checks a key's rpm, tpm and budgets before a request; thread-safe."""

    def __init__(self, ledger: Ledger, clock: object = time.time) -> None:
        self._ledger = ledger
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}
        self._reserved: dict[str, int] = {}

    def _now(self) -> float:
        return float(self._clock())  # type: ignore[operator]

    def admit(self, key: ApiKey, tokens: int, worst_cost: int) -> Reservation:
        """Count the request against ``key`` or raise 429 (rate) / 402 (budget)."""
        now = self._now()
        with self._lock:
            window = self._windows.setdefault(key.id, _Window())
            window.trim(now)
            self._check_rate(key, window, tokens, now)
            self._check_budget(key, worst_cost, now)
            entry = [now, float(tokens)]
            window.events.append(entry)
            self._reserved[key.id] = self._reserved.get(key.id, 0) + worst_cost
            return Reservation(key.id, worst_cost, entry)

    def release(self, reservation: Reservation, tokens: int | None = None) -> None:
        """The request is over: its real cost is in the ledger; ``tokens`` it really used."""
        with self._lock:
            if tokens is not None:
                reservation.entry[1] = float(tokens)
            left = self._reserved.get(reservation.key_id, 0) - reservation.amount
            self._reserved[reservation.key_id] = max(left, 0)
            reservation.amount = 0

    def headers(self, key: ApiKey) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-*`` headers for ``key`` now."""
        now = self._now()
        with self._lock:
            window = self._windows.setdefault(key.id, _Window())
            window.trim(now)
            out: dict[str, str] = {}
            reset = f"{window.reset_in(now):.1f}s"
            if key.rpm is not None:
                out["x-ratelimit-limit-requests"] = str(key.rpm)
                out["x-ratelimit-remaining-requests"] = str(max(key.rpm - window.requests(), 0))
                out["x-ratelimit-reset-requests"] = reset
            if key.tpm is not None:
                out["x-ratelimit-limit-tokens"] = str(key.tpm)
                out["x-ratelimit-remaining-tokens"] = str(max(key.tpm - window.tokens(), 0))
                out["x-ratelimit-reset-tokens"] = reset
            return out

    def _check_rate(self, key: ApiKey, window: _Window, tokens: int, now: float) -> None:
        retry = f"{window.reset_in(now):.1f}"
        if key.rpm is not None and window.requests() + 1 > key.rpm:
            raise GatewayError(
                429,
                f"key {key.name!r} is over its limit of {key.rpm} requests per minute; "
                f"retry in {retry} s",
                "rate_limit_exceeded",
                "requests",
                headers={"retry-after": str(max(1, round(window.reset_in(now))))},
            )
        if key.tpm is not None and window.tokens() + tokens > key.tpm:
            if tokens > key.tpm:
                message = (
                    f"this request may use {tokens} tokens (prompt + max_tokens), more than key "
                    f"{key.name!r}'s limit of {key.tpm} tokens per minute: lower max_tokens"
                )
            else:
                message = (
                    f"key {key.name!r} is over its limit of {key.tpm} tokens per minute "
                    f"({window.tokens()} used, this request may use {tokens}); retry in {retry} s"
                )
            raise GatewayError(
                429,
                message,
                "rate_limit_exceeded",
                "tokens",
                headers={"retry-after": str(max(1, round(window.reset_in(now))))},
            )

    def _check_budget(self, key: ApiKey, worst_cost: int, now: float) -> None:
        reserved = self._reserved.get(key.id, 0)
        if key.max_total is not None:
            spent = self._ledger.spent(key.id) + reserved
            if spent + worst_cost > key.max_total:
                raise _over_budget(key, "total", key.max_total, spent, worst_cost)
        if key.max_daily is not None:
            spent = self._ledger.spent(key.id, today(now)) + reserved
            if spent + worst_cost > key.max_daily:
                raise _over_budget(key, "daily", key.max_daily, spent, worst_cost)


def _over_budget(key: ApiKey, which: str, limit: int, spent: int, worst: int) -> GatewayError:
    return GatewayError(
        402,
        f"key {key.name!r} is over its {which} budget: {spent} of {limit} base units spent or "
        f"reserved, and this request may cost up to {worst} (prompt + max_tokens at the "
        "provider's price); lower max_tokens or raise the limit "
        "(tallystick gateway keys limit)",
        "budget_exceeded",
        "max_tokens",
        type="insufficient_quota",
    )
