"""TransformersEngine: in-process inference with a continuous-batching scheduler.

A worker thread runs the torch loop; the asyncio side talks to it through a locked deque of
waiting requests (in) and per-request asyncio queues fed with ``loop.call_soon_threadsafe``
(out). At every step boundary the worker drops finished and cancelled sequences, prefills
the waiting ones (up to ``max_batch``) and merges them into the running batch, then runs
one batched decode step. See docs/internals.md, "Engine interface".
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections import deque
from collections.abc import AsyncIterator, Hashable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ._base import Prompt, SamplingParams, TokenEvent
from ._batch import Batch
from ._errors import EngineError, EngineOverloaded, EngineStopped, PromptTooLong
from ._loading import LoadedModel, load_model
from ._prefix import PrefixCache
from ._sampling import SeededSampler, make_generator, sample, token_logprob
from ._sequence import SequenceOutput

__all__ = ["TransformersEngine"]

log = logging.getLogger("tallystick.node.engines")

THREADS_ENV = "TALLYSTICK_THREADS"
# KV of finished sequences kept for prefix reuse (SmolLM2-135M, float32: ~46 KB per token).
DEFAULT_PREFIX_CACHE_BYTES = 512 * 2**20


@dataclass(eq=False)
class _Request:
    """One request as the worker sees it."""

    prompt: list[int]
    params: SamplingParams
    output: SequenceOutput
    generator: torch.Generator
    sampler: SeededSampler | None  # None: the baseline sampler (fidelity bench only)
    loop: asyncio.AbstractEventLoop
    scope: Hashable = None  # prefix-cache scope (the node passes the channel id)
    events: asyncio.Queue[TokenEvent | BaseException] = field(default_factory=asyncio.Queue)
    last_id: int = -1
    sampled: list[int] = field(default_factory=list)  # generated (KV holds all but the last)
    cancelled: bool = False  # set by the consumer when it closes the iterator

    def send(self, item: TokenEvent | BaseException) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:  # the consumer's event loop is closed: nobody is listening
            self.cancelled = True


class TransformersEngine:
    """Serves a transformers causal LM in-process, batching concurrent requests."""

    supports_logprobs = True  # SamplingParams.logprobs: each id's logprob and the top ones

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        model_name: str | None = None,
        context_length: int | None = None,
        max_batch: int = 16,
        max_queue: int = 64,
        num_threads: int | None = None,
        seeded: bool = True,
        model_hash: bytes | None = None,
        prefix_cache_bytes: int = DEFAULT_PREFIX_CACHE_BYTES,
    ) -> None:
        from tallystick.protocol import TokenCounter, TokenizerBundle
        from tallystick.protocol._fidelity import SAMPLER

        self._model = loaded.model
        self.model_name = model_name or loaded.name
        self.context_length = context_length or loaded.context_length
        self.tokenizer_bundle = TokenizerBundle.from_hf(loaded.tokenizer)
        self.counter = TokenCounter(self.tokenizer_bundle)
        # Every special id ends a sequence: a client pays a special id only as the last one
        # (docs/protocol.md §6), and an honest node never bills one in the middle.
        self._eos_ids = (
            loaded.eos_ids | frozenset(self.counter.eos_token_ids) | self.counter.special_token_ids
        )
        self._max_batch = max_batch
        self._max_queue = max_queue
        self._threads = num_threads or default_threads()
        # The audit contract of §10: the seeded sampler's name and the weights' modelHash.
        self._seeded = seeded
        self.sampler = SAMPLER if seeded else None
        self.model_hash = model_hash
        self._waiting: deque[_Request] = deque()
        self._running: list[_Request] = []
        self._wake = threading.Condition()
        self._worker: threading.Thread | None = None
        self._stopping = False
        self.prefix_cache = PrefixCache(prefix_cache_bytes)  # touched by the worker only

    @classmethod
    def load(cls, source: str, **kwargs: Any) -> TransformersEngine:
        """Load ``source`` (model folder, ``.gguf`` file or hub id) and build the engine.

        A local source's modelHash (§10.1) is computed from the files as loaded."""
        from tallystick.protocol._fidelity import model_hash

        if "model_hash" not in kwargs and Path(source).exists():
            kwargs["model_hash"] = model_hash(source)
        return cls(load_model(source), **kwargs)

    async def start(self) -> None:
        if self._worker is not None:
            return
        self._stopping = False
        self._worker = threading.Thread(target=self._work, name="tallystick-engine", daemon=True)
        self._worker.start()
        log.info(
            "engine %s started (max batch %d, %d torch threads)",
            self.model_name,
            self._max_batch,
            self._threads,
        )

    async def stop(self) -> None:
        worker, self._worker = self._worker, None
        if worker is None:
            return
        with self._wake:
            self._stopping = True
            self._wake.notify()
        await asyncio.to_thread(worker.join)

    def stats(self) -> dict[str, int]:
        return {
            "queued": len(self._waiting),
            "running": len(self._running),
            "max_batch": self._max_batch,
        }

    def generate(self, prompt: Prompt, params: SamplingParams) -> AsyncIterator[TokenEvent]:
        if self._worker is None:
            raise EngineStopped("engine is not running")
        if not prompt.ids or len(prompt.ids) >= self.context_length:
            raise PromptTooLong(len(prompt.ids), self.context_length)
        if len(self._waiting) >= self._max_queue:
            raise EngineOverloaded(self._max_queue)
        return self._stream(prompt, params)

    async def _stream(self, prompt: Prompt, params: SamplingParams) -> AsyncIterator[TokenEvent]:
        request = self._request(prompt, params)
        with self._wake:
            self._waiting.append(request)
            self._wake.notify()
        try:
            while True:
                item = await request.events.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            request.cancelled = True  # no-op once finished; otherwise frees the slot
            with self._wake:
                self._wake.notify()

    def _request(self, prompt: Prompt, params: SamplingParams) -> _Request:
        budget = min(params.max_tokens, self.context_length - len(prompt.ids))
        return _Request(
            prompt=list(prompt.ids),
            params=params,
            output=SequenceOutput(self.counter.decode, self._eos_ids, params, budget),
            generator=make_generator(params.seed),
            sampler=SeededSampler(params) if self._seeded and params.seed is not None else None,
            loop=asyncio.get_running_loop(),
            scope=prompt.cache_scope,
        )

    # --- the worker thread -------------------------------------------------------------

    def _work(self) -> None:
        # OpenMP's thread count is per calling thread: set it where the model runs.
        torch.set_num_threads(self._threads)
        batch = Batch()
        with torch.inference_mode():
            while self._next_step(batch):
                try:
                    self._step(batch)
                except Exception as exc:  # the model failed: fail its requests, keep serving
                    log.exception("engine step failed")
                    self._fail_all(batch, EngineError(f"inference failed: {exc}"))
        self._fail_all(batch, EngineStopped("engine stopped"))

    def _next_step(self, batch: Batch) -> bool:
        """Wait until there is work; False when stopping."""
        with self._wake:
            while not self._stopping and not self._running and not self._waiting:
                self._wake.wait()
            return not self._stopping

    def _step(self, batch: Batch) -> None:
        self._drop_done(batch)
        admitted = self._admit()
        cold = []
        for request in admitted:  # a cached prefix: only the rest of the prompt is computed
            hit = self.prefix_cache.match(request.scope, request.prompt)
            if hit is None:
                cold.append(request)
                continue
            logits = batch.prefill_after(self._model, hit.layers, request.prompt[hit.length :])
            self._running.append(request)
            self._publish(batch, self._sample([request], logits))
        if cold:
            logits = batch.prefill(self._model, [r.prompt for r in cold])
            self._running.extend(cold)
            self._publish(batch, self._sample(cold, logits))
        if self._running:
            logits = batch.decode(self._model, [r.last_id for r in self._running])
            self._publish(batch, self._sample(self._running, logits))

    def _admit(self) -> list[_Request]:
        admitted: list[_Request] = []
        with self._wake:
            while self._waiting and len(self._running) + len(admitted) < self._max_batch:
                request = self._waiting.popleft()
                if not request.cancelled:
                    request.output.mark_scheduled()
                    admitted.append(request)
        return admitted

    def _sample(
        self, requests: list[_Request], logits: torch.Tensor
    ) -> list[tuple[_Request, TokenEvent]]:
        out = []
        for request, row in zip(requests, logits, strict=True):
            if request.cancelled:
                continue
            if request.sampler is None:
                request.last_id = sample(row, request.params, request.generator)
                request.sampled.append(request.last_id)
                event = request.output.add(request.last_id)
            else:
                request.last_id = request.sampler(row)
                request.sampled.append(request.last_id)
                event = request.output.add(request.last_id)
                event = replace(event, logits=(request.sampler.logits[-1],))
            if request.params.logprobs is not None:
                found = token_logprob(row, request.last_id, request.params.logprobs)
                event = replace(event, logprobs=(found,))
            out.append((request, event))
        return out

    def _publish(self, batch: Batch, events: list[tuple[_Request, TokenEvent]]) -> None:
        # Finished sequences leave first, so stats() is exact when a final event arrives.
        self._drop_done(batch)
        for request, event in events:
            request.send(event)

    def _drop_done(self, batch: Batch) -> None:
        rows = [i for i, r in enumerate(self._running) if not _done(r)]
        if len(rows) < len(self._running) and self.prefix_cache.max_bytes > 0:
            for i, request in enumerate(self._running):
                if _done(request) and int(batch.lengths[i]) >= self.prefix_cache.min_tokens:
                    ids = [*request.prompt, *request.sampled][: int(batch.lengths[i])]
                    self.prefix_cache.put(request.scope, ids, batch.row_kv(i))
        batch.keep(rows)
        self._running = [self._running[i] for i in rows]

    def _fail_all(self, batch: Batch, error: EngineError) -> None:
        with self._wake:
            doomed = [*self._running, *self._waiting]
            self._running, self._waiting = [], deque()
        batch.keep([])
        for request in doomed:
            if not _done(request):
                request.send(error)


def default_threads() -> int:
    """``$TALLYSTICK_THREADS`` when set, else all cores but one (at least one).

    The event loop (HTTP, tokenising, signing) needs a core of its own, and torch's OpenMP
    team stalls at every op's barrier when one of its threads is descheduled. Measured on
    the 2-core box (docs/internals.md): 2 threads instead of 1 gain nothing at batch 1 and
    at best nothing at batch 8 with torch in the worker thread, and run 2-5x slower as soon
    as anything else wants a core."""
    value = os.environ.get(THREADS_ENV)
    if value:
        if value.isdigit() and int(value) > 0:
            return int(value)
        log.warning("%s=%r is not a positive integer: ignored", THREADS_ENV, value)
    return max(1, (os.cpu_count() or 1) - 1)


def _done(request: _Request) -> bool:
    return request.cancelled or request.output.finished
