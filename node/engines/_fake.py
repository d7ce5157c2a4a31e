"""FakeEngine: a deterministic engine for unit tests of the node (no model, no torch).

It replays a scripted reply tokenised with a real tokenizer (by default the tiny byte-level
one), followed by EOS, one id every ``token_delay`` seconds. Everything but the model is the
real code path: counting rule, stop strings, max_tokens, context limit, timing, slots.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from ._base import Prompt, SamplingParams, TokenEvent
from ._errors import EngineError, EngineOverloaded, EngineStopped, PromptTooLong
from ._sequence import SequenceOutput
from ._tiny import tiny_tokenizer_bundle

if TYPE_CHECKING:
    from tallystick.protocol import TokenizerBundle

__all__ = ["DEFAULT_REPLY", "FakeEngine"]

DEFAULT_REPLY = "Hello world, the quick brown fox jumps over the lazy dog."


class FakeEngine:
    """Replays ``reply`` (a string, or a function of the prompt) as generated tokens."""

    def __init__(
        self,
        *,
        reply: str | Callable[[Prompt], str] = DEFAULT_REPLY,
        token_delay: float = 0.0,
        bundle: TokenizerBundle | None = None,
        model_name: str = "fake-model",
        context_length: int = 2048,
        max_batch: int = 8,
        max_queue: int = 64,
        fail_after: int | None = None,
    ) -> None:
        from tallystick.protocol import TokenCounter
        from tokenizers import Tokenizer

        self.model_name = model_name
        self.context_length = context_length
        self.tokenizer_bundle = bundle if bundle is not None else tiny_tokenizer_bundle()
        self.counter = TokenCounter(self.tokenizer_bundle)
        self._tokenizer = Tokenizer.from_str(self.tokenizer_bundle.tokenizer_json)
        self._reply = reply
        self._delay = token_delay
        self._max_batch = max_batch
        self._max_queue = max_queue
        self._fail_after = fail_after  # raise EngineError after this many ids (crash tests)
        self._slots: asyncio.Semaphore | None = None
        self._queued = 0
        self._running = 0

    async def start(self) -> None:
        self._slots = asyncio.Semaphore(self._max_batch)

    async def stop(self) -> None:
        self._slots = None

    def stats(self) -> dict[str, int]:
        return {"queued": self._queued, "running": self._running, "max_batch": self._max_batch}

    def generate(self, prompt: Prompt, params: SamplingParams) -> AsyncIterator[TokenEvent]:
        if self._slots is None:
            raise EngineStopped("engine is not running")
        if len(prompt.ids) >= self.context_length:
            raise PromptTooLong(len(prompt.ids), self.context_length)
        if self._queued >= self._max_queue:
            raise EngineOverloaded(self._max_queue)
        return self._stream(self._slots, prompt, params)

    def script(self, prompt: Prompt) -> list[int]:
        """The ids this engine generates for ``prompt`` when nothing cuts it short."""
        text = self._reply(prompt) if callable(self._reply) else self._reply
        eos = self._tokenizer.token_to_id(self.tokenizer_bundle.eos_token or "")
        ids: list[int] = self._tokenizer.encode(text, add_special_tokens=False).ids
        return ids if eos is None else [*ids, eos]

    async def _stream(
        self, slots: asyncio.Semaphore, prompt: Prompt, params: SamplingParams
    ) -> AsyncIterator[TokenEvent]:
        out = self._output(prompt, params)
        self._queued += 1
        try:
            await slots.acquire()
        finally:
            self._queued -= 1
        self._running += 1
        try:
            out.mark_scheduled()
            for token_id in self.script(prompt):
                await asyncio.sleep(self._delay)
                if self._fail_after is not None and out.generated >= self._fail_after:
                    raise EngineError("fake engine failure")
                event = out.add(token_id)
                yield event
                if event.finish_reason is not None:
                    return
        finally:
            self._running -= 1
            slots.release()

    def _output(self, prompt: Prompt, params: SamplingParams) -> SequenceOutput:
        eos_ids = frozenset(self.counter.eos_token_ids) | self.counter.special_token_ids
        budget = min(params.max_tokens, self.context_length - len(prompt.ids))
        return SequenceOutput(self.counter.decode, eos_ids, params, budget)
