"""UpstreamEngine: meter an existing OpenAI-compatible server (vLLM, SGLang, llama.cpp, ...).

Requests are forwarded with streaming; the completion is metered with the token ids the
upstream returns when it can (vLLM's ``return_token_ids``), otherwise by re-tokenising the
returned text with the model's own tokenizer. Prompt ids are always computed locally (the
counting rule, §6); the upstream's ``prompt_tokens`` is only checked, with a warning when it
differs. Stop strings are applied here, not upstream, so the text always follows §6 from
the metered ids; the upstream stream is closed as soon as one matches.

llama.cpp's ``llama-server`` (found by its ``/props``) is driven through its native
``/completion``: the node sends the metered prompt ids themselves (so the model reads exactly
what is billed) and reads each generated id from the stream (``return_tokens``); its
``/tokenize`` is checked against the node's tokenizer at start. ``cache_prompt`` lets a slot
reuse the KV cache of the prompt prefix it already holds (billing is unchanged).

llama-cpp-python's ``llama_cpp.server`` (found by its ``/extras/tokenize``) returns no token
ids at all, and its OpenAI endpoints take only text: the node sends the metered prompt ids
decoded with their special tokens as the prompt of ``/v1/completions`` (no chat template of
its own; its ``/extras/tokenize`` of a sample prompt is checked against the node's ids at
start, so it reads exactly the billed ids) and meters the completion by re-tokenising the
returned text with the listing's tokenizer (the counting rule: the billed ids decode to the
text). A stream it ends with ``[DONE]`` and no ``finish_reason`` was interrupted by another
request (its default ``interrupt_requests``): an ``UpstreamError`` naming the flag.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from ._base import Prompt, SamplingParams, TokenEvent
from ._errors import (
    EngineError,
    EngineOverloaded,
    EngineStopped,
    PromptTooLong,
    UpstreamError,
    UpstreamUnavailable,
)
from ._loading import load_tokenizer
from ._sequence import SequenceOutput
from ._upstream_wire import (
    _chunks,
    _llama_cpp_python_body,
    _Meter,
    _model_ids,
    _native_body,
    _NativeChunks,
    _raise_for_status,
    _send,
)

__all__ = ["UpstreamEngine"]

log = logging.getLogger("tallystick.node.engines")

_LAST_WORD = re.compile(r"\s+\S*\s*$")
_MAX_TAIL = 64  # characters of upstream text held back at most, in re-tokenise mode


class UpstreamEngine:
    """Fronts an OpenAI-compatible server at ``base_url`` and meters what it generates."""

    def __init__(
        self,
        base_url: str,
        tokenizer: Any,
        *,
        model_name: str,
        context_length: int,
        upstream_model: str | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,
        connect_timeout: float = 5.0,
        max_concurrency: int = 64,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        from tallystick.protocol import TokenCounter, TokenizerBundle
        from tokenizers import Tokenizer

        self.model_name = model_name
        self.context_length = context_length
        self.tokenizer_bundle = TokenizerBundle.from_hf(tokenizer)
        self.counter = TokenCounter(self.tokenizer_bundle)
        self._encoder = Tokenizer.from_str(self.tokenizer_bundle.tokenizer_json)
        # Every special id ends a sequence (§6: a client pays one only as the last id).
        self._eos_ids = frozenset(self.counter.eos_token_ids) | self.counter.special_token_ids
        self._base_url = base_url.rstrip("/")
        self._upstream_model = upstream_model
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = httpx.Timeout(timeout, connect=connect_timeout)
        self._transport = transport
        self._max_concurrency = max_concurrency
        self._client: httpx.AsyncClient | None = None
        self._want_ids = True  # ask for vLLM token ids until the upstream refuses them
        self._running = 0
        self.llamacpp: dict[str, Any] | None = None  # llama-server's /props, when it is one
        self.llama_cpp_python = False  # llama_cpp.server (llama-cpp-python), found at start
        # llama.cpp: prompt ids read from a slot's KV cache / computed (its final ``timings``)
        self.prompt_tokens_cached = 0
        self.prompt_tokens_computed = 0

    @classmethod
    def from_source(cls, base_url: str, source: str, **kwargs: Any) -> UpstreamEngine:
        """Build one with the tokenizer of ``source`` (a model folder, ``.gguf`` or hub id)."""
        loaded = load_tokenizer(source)
        kwargs.setdefault("model_name", loaded.name)
        kwargs["context_length"] = kwargs.get("context_length") or loaded.context_length
        return cls(base_url, loaded.tokenizer, **kwargs)

    async def start(self) -> None:
        if self._client is not None:
            return
        client = httpx.AsyncClient(
            base_url=self._base_url,
            headers=self._headers,
            timeout=self._timeout,
            transport=self._transport,
        )
        try:
            await self._discover_model(client)
            await self._discover_llamacpp(client)
            if self.llamacpp is None:
                await self._discover_llama_cpp_python(client)
        except BaseException:
            await client.aclose()
            raise
        self._client = client
        mode = "OpenAI API"
        if self.llamacpp is not None:
            mode = "llama.cpp native /completion"
        elif self.llama_cpp_python:
            mode = "llama_cpp.server /v1/completions, re-tokenised"
        log.info("metering upstream %s (model %s, %s)", self._base_url, self._upstream_model, mode)

    async def stop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    @property
    def greedy_auditable(self) -> bool:
        """llama.cpp's native ids at temperature 0 pass a greedy audit (measured, §10.5)."""
        return self.llamacpp is not None

    def stats(self) -> dict[str, int]:
        # The upstream queues and batches; requests over the limit are refused, not queued.
        return {"queued": 0, "running": self._running, "max_batch": self._max_concurrency}

    def generate(self, prompt: Prompt, params: SamplingParams) -> AsyncIterator[TokenEvent]:
        if self._client is None:
            raise EngineStopped("engine is not running")
        if len(prompt.ids) >= self.context_length:
            raise PromptTooLong(len(prompt.ids), self.context_length)
        if prompt.messages is None and prompt.text is None:
            raise EngineError("an upstream engine needs the prompt's messages or text")
        if self._running >= self._max_concurrency:
            raise EngineOverloaded(self._max_concurrency)
        return self._stream(self._client, prompt, params)

    async def _discover_model(self, client: httpx.AsyncClient) -> None:
        try:
            response = await client.get("/v1/models")
        except httpx.TransportError as exc:
            raise UpstreamUnavailable(f"{self._base_url}: {exc!r}") from exc
        if self._upstream_model is not None:
            return
        ids = _model_ids(response)
        if not ids:
            raise UpstreamError(
                f"{self._base_url}/v1/models lists no model (HTTP {response.status_code}); "
                "name the upstream model explicitly",
                response.status_code,
            )
        self._upstream_model = ids[0]

    async def _discover_llamacpp(self, client: httpx.AsyncClient) -> None:
        """Switch to the native API when ``client`` is a llama-server whose vocabulary is ours."""
        try:
            response = await client.get("/props")
            props = response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return
        if not isinstance(props, dict) or "default_generation_settings" not in props:
            return
        sample = self.counter.chat_prompt_ids(
            [{"role": "user", "content": "Café 東京 naïve ünïcödé 12345 <tag> \t tabs"}]
        )
        text = self._encoder.decode(sample, skip_special_tokens=False)
        try:
            answer = await client.post(
                "/tokenize", json={"content": text, "add_special": False, "parse_special": True}
            )
            theirs = [int(t) for t in answer.json()["tokens"]]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise UpstreamError(f"{self._base_url}/tokenize failed: {exc!r}") from exc
        ours = self._encode_special(text)
        if theirs != ours:
            raise UpstreamError(
                f"llama.cpp at {self._base_url} tokenises differently from --model's tokenizer "
                f"({len(theirs)} vs {len(ours)} ids for the same prompt): serve the same GGUF"
            )
        slot_ctx = (props.get("default_generation_settings") or {}).get("n_ctx")
        if isinstance(slot_ctx, int) and 0 < slot_ctx < self.context_length:
            log.info(
                "llama.cpp slots hold %d tokens (model context %d): prompts are limited to it",
                slot_ctx,
                self.context_length,
            )
            self.context_length = slot_ctx
        self.llamacpp = props

    async def _discover_llama_cpp_python(self, client: httpx.AsyncClient) -> None:
        """Switch to the prompt-as-text path when ``client`` is a ``llama_cpp.server`` whose
        tokenizer reads the node's prompt text back as exactly the node's ids."""
        sample = self.counter.chat_prompt_ids(
            [{"role": "user", "content": "Café 東京 naïve ünïcödé 12345 <tag> \t tabs"}]
        )
        text = self._encoder.decode(sample, skip_special_tokens=False)
        body: dict[str, Any] = {"input": text}
        if self._upstream_model is not None:
            body["model"] = self._upstream_model
        try:
            answer = await client.post("/extras/tokenize", json=body)
            tokens = answer.json().get("tokens") if answer.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return
        if not isinstance(tokens, list):
            return
        theirs = [int(t) for t in tokens]
        if theirs != sample:
            raise UpstreamError(
                f"llama_cpp.server at {self._base_url} reads the node's prompt text as other ids "
                f"than the node's tokenizer ({len(theirs)} vs {len(sample)} ids for the same "
                "prompt): serve the same GGUF"
            )
        self.llama_cpp_python = True

    def _encode_special(self, text: str) -> list[int]:
        return list(self._encoder.encode(text, add_special_tokens=False).ids)

    async def _stream(
        self, client: httpx.AsyncClient, prompt: Prompt, params: SamplingParams
    ) -> AsyncIterator[TokenEvent]:
        budget = min(params.max_tokens, self.context_length - len(prompt.ids))
        output = SequenceOutput(self.counter.decode, self._eos_ids, params, budget)
        native = _NativeChunks(self._encoder) if self.llamacpp is not None else None
        meter = _Meter(self._encoder, output, budget, hold_back=native is None)
        self._running += 1
        try:
            async with self._open(client, prompt, params, budget) as response:
                output.mark_scheduled()
                async for raw in _chunks(response):
                    chunk = native.convert(raw) if native is not None else raw
                    self._check_prompt_tokens(chunk, prompt)
                    if output.finished:
                        continue  # llama.cpp ends by itself (EOS, n_predict): read its timings
                    for event in meter.feed(chunk):
                        yield event
                    if output.finished and (native is None or output.detok.stopped):
                        return  # leaving the block closes the upstream stream
                if not output.finished and self.llama_cpp_python and not meter.finish_seen:
                    raise UpstreamError(
                        f"llama_cpp.server at {self._base_url} ended the stream without a "
                        "finish_reason: another request interrupted it (run it with "
                        "--interrupt_requests False)"
                    )
                if not output.finished:
                    for event in meter.end():
                        yield event
                if native is not None:
                    self.prompt_tokens_cached += native.cached
                    self.prompt_tokens_computed += native.computed
        except httpx.TransportError as exc:
            raise UpstreamUnavailable(f"{self._base_url}: {exc!r}") from exc
        finally:
            self._running -= 1

    @asynccontextmanager
    async def _open(
        self, client: httpx.AsyncClient, prompt: Prompt, params: SamplingParams, budget: int
    ) -> AsyncIterator[httpx.Response]:
        path, body = self._request(prompt, params, budget)
        response = await _send(client, path, body)
        try:
            if not (response.status_code in (400, 422) and "return_token_ids" in body):
                await _raise_for_status(response)
                yield response
                return
        finally:
            await response.aclose()
        self._want_ids = False  # the upstream refuses the extra field: never send it again
        path, body = self._request(prompt, params, budget)
        response = await _send(client, path, body)
        try:
            await _raise_for_status(response)
            yield response
        finally:
            await response.aclose()

    def _request(self, prompt: Prompt, params: SamplingParams, budget: int) -> tuple[str, dict]:
        if self.llamacpp is not None:
            return "/completion", _native_body(prompt, params, budget)
        if self.llama_cpp_python:
            text = self._encoder.decode(prompt.ids, skip_special_tokens=False)
            return "/v1/completions", _llama_cpp_python_body(
                self._upstream_model, text, params, budget
            )
        body: dict[str, Any] = {
            "model": self._upstream_model,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": budget,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        if self._want_ids:
            body["return_token_ids"] = True
        if prompt.messages is not None:
            return "/v1/chat/completions", {**body, "messages": prompt.messages}
        return "/v1/completions", {**body, "prompt": prompt.text}

    def _check_prompt_tokens(self, chunk: dict[str, Any], prompt: Prompt) -> None:
        usage = chunk.get("usage") or {}
        reported = usage.get("prompt_tokens")
        if isinstance(reported, int) and reported != len(prompt.ids):
            log.warning(
                "upstream %s counted %d prompt tokens, the counting rule gives %d "
                "(different tokenizer or chat template?)",
                self._base_url,
                reported,
                len(prompt.ids),
            )
