"""``Completion``: one admitted request, metered from its reservation to its signed record.

It collects the ids the engine produced (with their arrival times and, from the seeded
sampler, their logits), then ``finish`` signs and stores the record for exactly those ids
(§6), recounts the rate-limit ticket and observes the metrics; ``abandon`` releases the
reservation when nothing billable happened. Admission (``_admission.py``) builds it; how it
reaches the client is ``_streaming.py``'s, in the shapes of ``_openai.py``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tallystick.protocol import encode_proof, params_units

from ._earnings import cost_added
from ._schemas import ChatRequest, CompletionRequest
from ._types import Provenance, StoredRecord

if TYPE_CHECKING:
    from ._gate import Reservation
    from ._ratelimit import Ticket
    from ._state import NodeState
    from .engines import Prompt, SamplingParams, TokenEvent
    from .engines._base import TokenLogprob

__all__ = ["Completion", "Request"]

Request = ChatRequest | CompletionRequest


@dataclass
class Completion:
    """A request admitted by the gate, from reservation to signed record."""

    node: NodeState
    request: Request
    chat: bool
    prompt: Prompt
    params: SamplingParams
    reservation: Reservation
    ticket: Ticket
    stream: AsyncIterator[TokenEvent]
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: int = field(default_factory=lambda: int(time.time()))
    ids: list[int] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    started: float = field(default_factory=time.perf_counter)
    stamps: list[float] = field(default_factory=list)  # arrival time of each event
    logits: list[float] = field(default_factory=list)  # the seeded sampler's, one per id
    logprobs: list[TokenLogprob] = field(default_factory=list)  # asked for: one per id

    @property
    def response_id(self) -> str:
        return ("chatcmpl-" if self.chat else "cmpl-") + self.id

    async def close_engine(self) -> None:
        await self.stream.aclose()  # type: ignore[attr-defined]  # frees the engine slot

    def add(self, event: TokenEvent) -> None:
        self.stamps.append(time.perf_counter())
        self.node.metrics.tokens_streamed(self.request.model, len(event.token_ids))
        self.ids.extend(event.token_ids)
        self.logits.extend(event.logits)
        self.logprobs.extend(event.logprobs)
        self.text.append(event.text)
        self.finish_reason = event.finish_reason or self.finish_reason

    def finish(self) -> StoredRecord:
        """Sign and store the record (and its timings) for the ids collected; observe metrics."""
        node = self.node
        timings = self.timings()
        stored = node.gate.finalize(
            self.reservation,
            self.request.model,
            self.prompt.ids,
            self.ids,
            timings,
            self.provenance(),
        )
        self.ticket.recount(len(self.prompt.ids) + len(self.ids))
        channel = self.reservation.channel
        rec = stored.signed.record
        added = cost_added(
            channel, (rec.input_tokens, rec.output_tokens), len(self.prompt.ids), len(self.ids)
        )
        node.metrics.observe_request(
            self.request.model,
            len(self.prompt.ids),
            timings["ttft_ms"] / 1e3,
            tuple(b - a for a, b in zip(self.stamps, self.stamps[1:], strict=False)),
            timings["total_ms"] / 1e3,
            self.finish_reason,
            revenue=(channel.token, added),
        )
        return stored

    def provenance(self) -> Provenance:
        """The record's §10 fields: the proof only when every id came with its logit."""
        engine = self.node.engine
        proof = encode_proof(self.logits) if len(self.logits) == len(self.ids) else []
        return Provenance(
            seed=self.params.seed or 0,
            temperature=params_units(self.params.temperature),
            top_p=params_units(self.params.top_p),
            model_hash=getattr(engine, "model_hash", None) or bytes(32),
            proof=proof,
        )

    def abandon(self) -> None:
        """Nothing billable happened (the engine failed before any id was delivered)."""
        self.node.gate.release(self.reservation)
        self.ticket.recount(0)

    def timings(self) -> dict[str, float]:
        end = self.stamps[-1] if self.stamps else time.perf_counter()
        ttft = (self.stamps[0] - self.started) if self.stamps else end - self.started
        gaps = max(len(self.ids) - 1, 1)
        itl = (end - self.stamps[0]) / gaps if self.stamps else 0.0
        return {
            "ttft_ms": round(ttft * 1e3, 3),
            "itl_ms": round(itl * 1e3, 3),
            "total_ms": round((end - self.started) * 1e3, 3),
        }

    def usage(self) -> dict[str, int]:
        p, c = len(self.prompt.ids), len(self.ids)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    @property
    def include_usage(self) -> bool:
        """The request asked for OpenAI's usage-only chunk (``stream_options``)."""
        options = self.request.stream_options
        return options is not None and options.include_usage
