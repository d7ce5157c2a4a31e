"""UpstreamEngine: meter an existing OpenAI-compatible server (vLLM, SGLang, llama.cpp, ...).

Requests are forwarded with streaming; the completion is metered with the token ids the
upstream returns when it can (vLLM's ``return_token_ids``), otherwise by re-tokenising the
returned text with the model's own tokenizer. Prompt ids are always computed locally (the
counting rule, §6); the upstream's ``prompt_tokens`` is only checked, with a warning when it
differs. Stop strings are applied here, not upstream, so the text always follows §6 from
the metered ids; the upstream stream is closed as soon as one matches.
"""

from __future__ import annotations

import json
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
        except BaseException:
            await client.aclose()
            raise
        self._client = client
        log.info("metering upstream %s (model %s)", self._base_url, self._upstream_model)

    async def stop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

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

    async def _stream(
        self, client: httpx.AsyncClient, prompt: Prompt, params: SamplingParams
    ) -> AsyncIterator[TokenEvent]:
        budget = min(params.max_tokens, self.context_length - len(prompt.ids))
        output = SequenceOutput(self.counter.decode, self._eos_ids, params, budget)
        meter = _Meter(self._encoder, output, budget)
        self._running += 1
        try:
            async with self._open(client, prompt, params, budget) as response:
                output.mark_scheduled()
                async for chunk in _chunks(response):
                    self._check_prompt_tokens(chunk, prompt)
                    for event in meter.feed(chunk):
                        yield event
                    if output.finished:
                        return  # leaving the block closes the upstream stream
                if not output.finished:
                    for event in meter.end():
                        yield event
        except httpx.TransportError as exc:
            raise UpstreamUnavailable(f"{self._base_url}: {exc!r}") from exc
        finally:
            self._running -= 1

    @asynccontextmanager
    async def _open(
        self, client: httpx.AsyncClient, prompt: Prompt, params: SamplingParams, budget: int
    ) -> AsyncIterator[httpx.Response]:
        path, body = self._request(prompt, params, budget)
        async with client.stream("POST", path, json=body) as response:
            if not (response.status_code in (400, 422) and "return_token_ids" in body):
                await _raise_for_status(response)
                yield response
                return
        self._want_ids = False  # the upstream refuses the extra field: never send it again
        path, body = self._request(prompt, params, budget)
        async with client.stream("POST", path, json=body) as response:
            await _raise_for_status(response)
            yield response

    def _request(self, prompt: Prompt, params: SamplingParams, budget: int) -> tuple[str, dict]:
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


class _Meter:
    """Turns upstream chunks into metered TokenEvents, holding back the newest ids so the
    final event carries at least one id (none only when the upstream generated nothing)."""

    def __init__(self, encoder: Any, output: SequenceOutput, budget: int) -> None:
        self._encoder = encoder
        self._output = output
        self._budget = budget
        self._pending: list[int] = []  # ids mode: the newest chunk's ids, not sent yet
        self._text = ""  # text mode: everything the upstream returned
        self._committed: list[int] = []  # text mode: ids sent so far ...
        self._committed_text = ""  # ... and the upstream text they stand for
        self._ids_mode = False
        self._finish: str | None = None

    def feed(self, chunk: dict[str, Any]) -> list[TokenEvent]:
        choice = (chunk.get("choices") or [{}])[0]
        self._finish = _finish_of(choice.get("finish_reason")) or self._finish
        ids = choice.get("token_ids")
        if isinstance(ids, list) and ids:
            self._ids_mode = True
            ready, self._pending = self._pending, [int(i) for i in ids]
            return self._emit(ready)
        self._text += _text_of(choice)
        return [] if self._ids_mode else self._emit(self._stable_ids())

    def end(self) -> list[TokenEvent]:
        if self._ids_mode:
            ready, self._pending = self._pending, []
        else:
            ready = self._new_ids(self._text)
        return self._emit(ready, final=True)

    def _stable_ids(self) -> list[int]:
        # Re-tokenise up to the last whitespace run before the last word: later text
        # cannot change the ids of what comes before it. Text without spaces (e.g. CJK)
        # is committed up to a short tail, so it still streams.
        last_word = _LAST_WORD.search(self._text)
        cut = last_word.start() if last_word else 0
        if len(self._text) - max(cut, len(self._committed_text)) > _MAX_TAIL:
            cut = len(self._text) - _MAX_TAIL // 4
        return self._new_ids(self._text[:cut])

    def _new_ids(self, text: str) -> list[int]:
        done = self._committed_text
        if len(text) <= len(done) or not text.startswith(done):
            return []
        ids = self._encode(text)
        if ids[: len(self._committed)] == self._committed:
            fresh = ids[len(self._committed) :]
        else:  # a token boundary moved: tokenise the new text alone (decode is still the text)
            fresh = self._encode(text[len(done) :])
        self._committed += fresh
        self._committed_text = text
        return fresh

    def _encode(self, text: str) -> list[int]:
        return list(self._encoder.encode(text, add_special_tokens=False).ids)

    def _emit(self, ids: list[int], final: bool = False) -> list[TokenEvent]:
        room = self._budget - self._output.generated
        if len(ids) >= room:  # never bill past the budget, whatever the upstream sent
            ids, final = ids[:room], True
        ends = [n for n, i in enumerate(ids) if i in self._output.eos_ids]
        if ends:  # nor past a special id: the sequence ends there (§6)
            ids, final = ids[: ends[0] + 1], True
        if not ids and not final:
            return []
        # The stream always ends with a finish_reason: with no ids when the upstream
        # generated nothing (nothing is billed for it, but the caller learns why it ended).
        finish = (self._finish or ("length" if ids else "stop")) if final else None
        return [self._output.add_many(ids, finish)]


def _finish_of(reason: Any) -> str | None:
    if reason is None:
        return None
    return "length" if reason == "length" else "stop"


def _text_of(choice: dict[str, Any]) -> str:
    delta = choice.get("delta")
    text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
    return text if isinstance(text, str) else ""


async def _chunks(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            return
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError as exc:
            raise UpstreamError(f"malformed stream chunk: {data[:200]!r}") from exc
        if isinstance(chunk, dict) and "error" in chunk:
            raise UpstreamError(_message_of(chunk["error"]))
        if isinstance(chunk, dict):
            yield chunk


async def _raise_for_status(response: httpx.Response) -> None:
    if response.status_code >= 400:
        await response.aread()
        raise UpstreamError(_error_message(response), response.status_code)


def _model_ids(response: httpx.Response) -> list[str]:
    try:
        data = response.json().get("data", [])
        return [m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]
    except (ValueError, AttributeError):
        return []


def _error_message(response: httpx.Response) -> str:
    try:
        return _message_of(response.json().get("error", response.text))
    except (ValueError, AttributeError):
        return response.text[:500] or response.reason_phrase


def _message_of(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("message", error))
    return str(error)
