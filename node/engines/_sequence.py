"""Per-request output bookkeeping shared by the engines: text, finish reason and timing."""

from __future__ import annotations

import time
from collections.abc import Callable

from ._base import SamplingParams, Timing, TokenEvent
from ._detok import Detokenizer

__all__ = ["SequenceOutput"]


class SequenceOutput:
    """Turns one request's generated ids into TokenEvents (counting rule, stops, timing)."""

    def __init__(
        self,
        decode: Callable[[list[int]], str],
        eos_ids: frozenset[int],
        params: SamplingParams,
        budget: int,
    ) -> None:
        self.detok = Detokenizer(decode, params.stop)
        self.eos_ids = eos_ids
        self.budget = budget  # max new ids: min(max_tokens, context left after the prompt)
        self.generated = 0
        self.finished = False
        self._created = time.perf_counter()
        self._scheduled: float | None = None
        self._first: float | None = None
        self._last: float | None = None
        self._gaps: list[float] = []

    def mark_scheduled(self) -> None:
        """The request joined a forward pass (end of queueing)."""
        if self._scheduled is None:
            self._scheduled = time.perf_counter()

    def add(self, token_id: int) -> TokenEvent:
        """Record one generated id and return the event to send for it."""
        return self.add_many([token_id])

    def add_many(self, token_ids: list[int], upstream_finish: str | None = None) -> TokenEvent:
        """Record ids that arrived together; ``upstream_finish`` ends the sequence as given."""
        self._clock()
        self.generated += len(token_ids)
        text = self.detok.push(token_ids)
        finish = self._finish_reason(token_ids) or upstream_finish
        if finish is None:
            return TokenEvent(token_ids, text, None)
        self.finished = True
        return TokenEvent(token_ids, text + self.detok.flush(), finish, self.timing())

    def timing(self) -> Timing:
        first = self._first if self._first is not None else time.perf_counter()
        scheduled = self._scheduled if self._scheduled is not None else first
        return Timing(
            queued_s=scheduled - self._created,
            ttft_s=first - self._created,
            inter_token_s=tuple(self._gaps),
        )

    def _clock(self) -> None:
        now = time.perf_counter()
        if self._first is None:
            self._first = now
            self.mark_scheduled()
        elif self._last is not None:
            self._gaps.append(now - self._last)
        self._last = now

    def _finish_reason(self, token_ids: list[int]) -> str | None:
        if self.detok.stopped or not self.eos_ids.isdisjoint(token_ids):
            return "stop"
        if self.generated >= self.budget:
            return "length"
        return None
