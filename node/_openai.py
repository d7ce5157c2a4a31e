"""OpenAI's response shapes for one completion: the whole answer, SSE chunks, ``[DONE]``.

Chat (``chat.completion`` / ``chat.completion.chunk``) and text (``text_completion``)
bodies, each carrying the signed record as its ``tallystick`` member (docs/protocol.md §8:
on the plain answer, and on the streamed chunk with ``finish_reason``). Only shapes here:
what was generated and billed is the ``Completion``'s (``_metering.py``).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._metering import Completion
    from ._types import StoredRecord
    from .engines import TokenEvent
    from .engines._base import TokenLogprob

__all__ = [
    "DONE",
    "answer_body",
    "delta_chunk",
    "final_chunk",
    "logprobs_of",
    "sse",
    "usage_chunk",
]

DONE = b"data: [DONE]\n\n"


def sse(obj: Any) -> bytes:
    """One server-sent event carrying ``obj`` as compact JSON."""
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def answer_body(completion: Completion, stored: StoredRecord) -> dict[str, Any]:
    """The non-streaming response."""
    text = "".join(completion.text)
    logprobs = logprobs_of(completion, completion.ids, completion.logprobs)
    if completion.chat:
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": completion.finish_reason,
            "logprobs": logprobs,
        }
    else:
        choice = {
            "index": 0,
            "text": text,
            "finish_reason": completion.finish_reason,
            "logprobs": logprobs,
        }
    return {
        **_head(completion, stream=False),
        "choices": [choice],
        "usage": completion.usage(),
        "tallystick": stored.bill().to_json(),
    }


def delta_chunk(
    completion: Completion,
    text: str,
    finish_reason: str | None,
    *,
    first: bool = False,
    event: TokenEvent | None = None,
) -> bytes:
    """One streamed delta (the first one names the assistant's role); with the logprobs of
    ``event``'s ids when the request asked for them."""
    chunk = _chunk(completion, text, finish_reason, first=first)
    if event is not None and event.logprobs:
        logprobs = logprobs_of(completion, event.token_ids, list(event.logprobs))
        chunk["choices"][0]["logprobs"] = logprobs
    return sse(chunk)


def logprobs_of(
    completion: Completion, ids: list[int], found: list[TokenLogprob]
) -> dict[str, Any] | None:
    """OpenAI's ``logprobs`` of ``ids``: chat's ``content`` list, or the legacy API's columns."""
    if completion.params.logprobs is None or len(found) != len(ids):
        return None
    decode = completion.node.engine.counter.decode
    tokens = [decode([i]) for i in ids]
    if completion.chat:
        return {
            "content": [
                {
                    **_token(token, logprob),
                    "top_logprobs": [_token(decode([a]), lp) for a, lp in top],
                }
                for token, (logprob, top) in zip(tokens, found, strict=True)
            ],
            "refusal": None,
        }
    offsets, at = [], 0
    for token in tokens:
        offsets.append(at)
        at += len(token)
    return {
        "tokens": tokens,
        "token_logprobs": [logprob for logprob, _ in found],
        "top_logprobs": [{decode([a]): lp for a, lp in top} for _, top in found],
        "text_offset": offsets,
    }


def _token(text: str, logprob: float) -> dict[str, Any]:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def final_chunk(completion: Completion, stored: StoredRecord) -> bytes:
    """The chunk with ``finish_reason``; it carries the signed record (§8)."""
    chunk = _chunk(completion, "", completion.finish_reason or "stop", first=False)
    return sse({**chunk, "tallystick": stored.bill().to_json()})


def usage_chunk(completion: Completion) -> bytes:
    """OpenAI's usage-only chunk (empty ``choices``): only when the request asked for it."""
    return sse({**_head(completion, stream=True), "choices": [], "usage": completion.usage()})


def _chunk(
    completion: Completion, text: str, finish_reason: str | None, *, first: bool
) -> dict[str, Any]:
    if completion.chat:
        delta: dict[str, Any] = (
            {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
        )
        choice: dict[str, Any] = {
            "index": 0,
            "delta": delta,
            "finish_reason": finish_reason,
            "logprobs": None,
        }
    else:
        choice = {"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}
    return {**_head(completion, stream=True), "choices": [choice]}


def _head(completion: Completion, *, stream: bool) -> dict[str, Any]:
    if completion.chat:
        kind = "chat.completion.chunk" if stream else "chat.completion"
    else:
        kind = "text_completion"
    return {
        "id": completion.response_id,
        "object": kind,
        "created": completion.created,
        "model": completion.request.model,
        "system_fingerprint": None,
    }
