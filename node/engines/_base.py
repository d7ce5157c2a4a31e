"""The engine interface: what the node asks of any inference engine (docs/internals.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from tallystick.protocol import TokenCounter, TokenizerBundle

__all__ = ["Engine", "Prompt", "SamplingParams", "Timing", "TokenEvent", "TokenLogprob"]

MAX_STOP_STRINGS = 4
MAX_TOP_LOGPROBS = 20  # OpenAI's limit for top_logprobs
# One generated id's logprob and its most likely alternatives: (logprob, ((id, logprob), ...))
TokenLogprob = tuple[float, tuple[tuple[int, float], ...]]


@dataclass(frozen=True)
class SamplingParams:
    """How one request samples; validated on construction so engines can trust it."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    # OpenAI's logprobs: None, none; k >= 0, each id's logprob and the k most likely ids'
    logprobs: int | None = None

    def __post_init__(self) -> None:
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_TOP_LOGPROBS:
            raise ValueError(f"logprobs must be in 0..{MAX_TOP_LOGPROBS}, got {self.logprobs}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if len(self.stop) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(self.stop)}")
        if any(s == "" for s in self.stop):
            raise ValueError("stop strings must not be empty")


@dataclass(frozen=True)
class Prompt:
    """A request's prompt: the metered ids, plus the original form an upstream engine forwards."""

    ids: list[int]  # the metered prompt ids (counting rule §6)
    messages: list[dict[str, Any]] | None = None  # chat requests
    text: str | None = None  # text-completion requests
    # Whose cached prefixes this prompt may reuse (the node: the channel id); None = shared.
    cache_scope: Hashable = None


@dataclass(frozen=True)
class Timing:
    """Latency of one request, in seconds, measured by the engine."""

    queued_s: float  # from generate() to the first forward pass that includes the request
    ttft_s: float  # from generate() to the first generated token
    inter_token_s: tuple[float, ...] = field(default=())  # gaps between consecutive tokens


@dataclass(frozen=True)
class TokenEvent:
    """Ids generated since the previous event, the text they add, and why generation ended."""

    token_ids: list[int]  # >= 1 id; none only on the final event of an empty upstream answer
    text: str  # "" while a UTF-8 char or a possible stop string is held back
    finish_reason: str | None  # None, "stop" (EOS or stop string; text cut before it), "length"
    timing: Timing | None = None  # set on the final event only
    # The logit of each id in token_ids as the seeded sampler saw it (the record's proof, §10);
    # empty from an engine without the seeded sampler.
    logits: tuple[float, ...] = ()
    # With SamplingParams.logprobs: per id, its logprob and the top (id, logprob) alternatives,
    # from the model's distribution (log-softmax of its logits, before temperature and top_p).
    logprobs: tuple[TokenLogprob, ...] = ()


@runtime_checkable
class Engine(Protocol):
    """An inference engine the node meters; see docs/internals.md "Engine interface"."""

    model_name: str
    context_length: int
    tokenizer_bundle: TokenizerBundle
    counter: TokenCounter

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def generate(self, prompt: Prompt, params: SamplingParams) -> AsyncIterator[TokenEvent]:
        """Stream a completion; closing the iterator frees the slot at the next step."""
        ...

    def stats(self) -> dict[str, int]:
        """Queue depth and running batch size (keys "queued", "running", "max_batch")."""
        ...
