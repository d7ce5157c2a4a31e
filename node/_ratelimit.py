"""Requests-per-minute and tokens-per-minute limits per channel, over a sliding 60 s window."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ._errors import ApiError

__all__ = ["RateLimiter", "Ticket"]

WINDOW_S = 60.0


@dataclass
class _Window:
    events: deque[list[float]] = field(default_factory=deque)  # [time, tokens] (mutable)

    def prune(self, now: float) -> None:
        while self.events and self.events[0][0] <= now - WINDOW_S:
            self.events.popleft()

    def tokens(self) -> int:
        return int(sum(e[1] for e in self.events))


@dataclass
class Ticket:
    """One admitted request; ``recount`` replaces its estimated tokens with the real count."""

    entry: list[float] | None
    headers: dict[str, str]

    def recount(self, tokens: int) -> None:
        if self.entry is not None:
            self.entry[1] = tokens


class RateLimiter:
    """0 disables a limit. Tokens are counted as prompt + max_tokens until the request ends."""

    def __init__(self, rpm: int, tpm: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self._clock = clock
        self._windows: dict[bytes, _Window] = {}

    @property
    def enabled(self) -> bool:
        return bool(self.rpm or self.tpm)

    def admit(self, key: bytes, tokens: int) -> Ticket:
        """Count the request, or raise 429 with ``retry-after`` and ``x-ratelimit-*`` headers."""
        if not self.enabled:
            return Ticket(None, {})
        now = self._clock()
        window = self._windows.setdefault(key, _Window())
        window.prune(now)
        wait_requests = self._wait_requests(window, now)
        wait_tokens = self._wait_tokens(window, now, tokens)
        if wait_requests > 0 or wait_tokens > 0:
            headers = self._headers(window, now, 0)
            headers["retry-after"] = str(max(1, math.ceil(max(wait_requests, wait_tokens))))
            raise ApiError(
                429,
                self._message(wait_requests, tokens),
                code="rate_limit_exceeded",
                headers=headers,
            )
        entry = [now, float(tokens)]
        window.events.append(entry)
        return Ticket(entry, self._headers(window, now, 0))

    def _wait_requests(self, window: _Window, now: float) -> float:
        if not self.rpm or len(window.events) < self.rpm:
            return 0.0
        # The oldest request that must leave the window before one more fits.
        return window.events[len(window.events) - self.rpm][0] + WINDOW_S - now

    def _wait_tokens(self, window: _Window, now: float, tokens: int) -> float:
        if not self.tpm:
            return 0.0
        if tokens > self.tpm:
            return WINDOW_S  # never fits; the message says so
        excess: float = window.tokens() + tokens - self.tpm
        for at, used in window.events:
            if excess <= 0:
                break
            excess -= used
            if excess <= 0:
                return at + WINDOW_S - now
        return 0.0

    def _message(self, wait_requests: float, tokens: int) -> str:
        if self.tpm and tokens > self.tpm:
            return (
                f"this request needs {tokens} tokens (prompt + max_tokens) but the limit is "
                f"{self.tpm} tokens per minute; lower max_tokens"
            )
        if wait_requests > 0:
            return f"rate limit of {self.rpm} requests per minute reached for this channel"
        return f"rate limit of {self.tpm} tokens per minute reached for this channel"

    def _headers(self, window: _Window, now: float, extra: int) -> dict[str, str]:
        headers: dict[str, str] = {}
        oldest = window.events[0][0] if window.events else now
        reset = f"{max(oldest + WINDOW_S - now, 0.0):.3f}s" if window.events else "0s"
        if self.rpm:
            headers["x-ratelimit-limit-requests"] = str(self.rpm)
            headers["x-ratelimit-remaining-requests"] = str(max(self.rpm - len(window.events), 0))
            headers["x-ratelimit-reset-requests"] = reset
        if self.tpm:
            headers["x-ratelimit-limit-tokens"] = str(self.tpm)
            headers["x-ratelimit-remaining-tokens"] = str(
                max(self.tpm - window.tokens() - extra, 0)
            )
            headers["x-ratelimit-reset-tokens"] = reset
        return headers
