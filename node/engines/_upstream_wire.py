"""The upstream engine's wire: request bodies, the upstream's stream, and the meter of its text.

``_upstream`` holds the engine (start, checks, admission); this module holds what it sends to
an upstream server and how it reads the answer: llama-server's native ``/completion`` body and
chunks, llama-cpp-python's text body, the OpenAI SSE stream, and ``_Meter``, which turns
returned text or ids into billed ids under the counting rule (§6).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx

from ._base import Prompt, SamplingParams, TokenEvent
from ._errors import (
    UpstreamError,
)
from ._sequence import SequenceOutput

log = logging.getLogger("tallystick.node.engines")

_LAST_WORD = re.compile(r"\s+\S*\s*$")
_MAX_TAIL = 64  # characters of upstream text held back at most, in re-tokenise mode


async def _send(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> httpx.Response:
    """POST ``body``, streamed. llama-server closes a kept-alive connection after a streamed
    answer without saying so (one sequential request in 2-4 failed with "Server disconnected
    without sending a response"): that request never reached it, so it goes once more on a
    new connection."""
    request = client.build_request("POST", path, json=body)
    try:
        return await client.send(request, stream=True)
    except httpx.RemoteProtocolError:
        return await client.send(request, stream=True)


def _native_body(prompt: Prompt, params: SamplingParams, budget: int) -> dict[str, Any]:
    """llama-server's ``/completion`` body: the metered ids in, ids out, plain sampling."""
    body: dict[str, Any] = {
        "prompt": prompt.ids,  # exactly the billed prompt (no BOS added to a list of ids)
        "n_predict": budget,
        "stream": True,
        "return_tokens": True,
        "cache_prompt": True,  # reuse the slot's KV cache for a shared prefix
        "temperature": params.temperature,
        "top_p": params.top_p,
        # OpenAI sampling: no top-k/min-p/typical/repetition samplers of llama.cpp's defaults.
        "top_k": 0,
        "min_p": 0.0,
        "typical_p": 1.0,
        "repeat_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
    }
    if params.seed is not None:
        body["seed"] = params.seed
    return body


def _llama_cpp_python_body(
    model: str | None, text: str, params: SamplingParams, budget: int
) -> dict[str, Any]:
    """``llama_cpp.server``'s ``/v1/completions`` body: the metered prompt as text (specials
    spelled out, parsed back by its tokenizer), plain OpenAI sampling."""
    body: dict[str, Any] = {
        "model": model,
        "prompt": text,
        "max_tokens": budget,
        "stream": True,
        "temperature": params.temperature,
        "top_p": params.top_p,
        # Its defaults are top_k 40, min_p 0.05, repeat_penalty 1.1: off, as the OpenAI API.
        "top_k": 0,
        "min_p": 0.0,
        "repeat_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
    }
    if params.seed is not None:
        body["seed"] = params.seed
    return body


class _NativeChunks:
    """Turns llama-server's native stream chunks into OpenAI-shaped ones with ``token_ids``.

    Each chunk carries the id llama.cpp sampled (``tokens``) and its running count
    (``tokens_predicted``). llama.cpp sends no chunk for an id that ends inside a UTF-8
    character; the next chunk's text covers it, so when the count shows ids it held back,
    that chunk's text is tokenised instead (the only place re-tokenising is used).
    """

    def __init__(self, encoder: Any) -> None:
        self._encoder = encoder
        self._seen = 0  # ids llama.cpp reported so far
        self.cached = 0  # prompt ids llama.cpp reused from the slot's cache (final timings)
        self.computed = 0  # prompt ids it evaluated

    def convert(self, chunk: dict[str, Any]) -> dict[str, Any]:
        tokens = chunk.get("tokens")
        ids = [int(t) for t in tokens] if isinstance(tokens, list) else []
        content = chunk.get("content") if isinstance(chunk.get("content"), str) else ""
        predicted = chunk.get("tokens_predicted")
        if ids and isinstance(predicted, int) and not chunk.get("stop"):
            if predicted > self._seen + len(ids) and content:
                held = predicted - self._seen - len(ids)
                ids = list(self._encoder.encode(content, add_special_tokens=False).ids)
                log.debug("llama.cpp held back %d ids (split character): re-tokenised", held)
            self._seen = predicted
        choice: dict[str, Any] = {"token_ids": ids, "text": content}
        timings = chunk.get("timings")
        if chunk.get("stop") and isinstance(timings, dict):
            self.cached = int(timings.get("cache_n") or 0)
            self.computed = int(timings.get("prompt_n") or 0)
        if chunk.get("stop"):
            choice["finish_reason"] = "length" if chunk.get("stop_type") == "limit" else "stop"
        out: dict[str, Any] = {"choices": [choice]}
        if isinstance(chunk.get("tokens_evaluated"), int) and chunk.get("stop"):
            out["usage"] = {"prompt_tokens": chunk["tokens_evaluated"]}
        return out


class _Meter:
    """Turns upstream chunks into metered TokenEvents, holding back the newest ids so the
    final event carries at least one id (none only when the upstream generated nothing).
    With ``hold_back=False`` (llama.cpp: its ids arrive one per chunk) each id is sent at
    once and an upstream end that no id announced is a final event without ids."""

    def __init__(
        self, encoder: Any, output: SequenceOutput, budget: int, *, hold_back: bool = True
    ) -> None:
        self._hold_back = hold_back
        self._encoder = encoder
        self._output = output
        self._budget = budget
        self._pending: list[int] = []  # ids mode: the newest chunk's ids, not sent yet
        self._text = ""  # text mode: everything the upstream returned
        self._committed: list[int] = []  # text mode: ids sent so far ...
        self._committed_text = ""  # ... and the upstream text they stand for
        self._ids_mode = False
        self._finish: str | None = None
        self.finish_seen = False  # the upstream sent a finish_reason

    def feed(self, chunk: dict[str, Any]) -> list[TokenEvent]:
        choice = (chunk.get("choices") or [{}])[0]
        self._finish = _finish_of(choice.get("finish_reason")) or self._finish
        self.finish_seen = self.finish_seen or choice.get("finish_reason") is not None
        ids = choice.get("token_ids")
        if isinstance(ids, list) and ids:
            self._ids_mode = True
            if not self._hold_back:
                return self._emit([int(i) for i in ids])
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
