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

__all__ = ["DONE", "answer_body", "delta_chunk", "final_chunk", "sse", "usage_chunk"]

DONE = b"data: [DONE]\n\n"


def sse(obj: Any) -> bytes:
    """One server-sent event carrying ``obj`` as compact JSON."""
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def answer_body(completion: Completion, stored: StoredRecord) -> dict[str, Any]:
    """The non-streaming response."""
    text = "".join(completion.text)
    if completion.chat:
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": completion.finish_reason,
            "logprobs": None,
        }
    else:
        choice = {
            "index": 0,
            "text": text,
            "finish_reason": completion.finish_reason,
            "logprobs": None,
        }
    return {
        **_head(completion, stream=False),
        "choices": [choice],
        "usage": completion.usage(),
        "tallystick": stored.bill().to_json(),
    }


def delta_chunk(
    completion: Completion, text: str, finish_reason: str | None, *, first: bool = False
) -> bytes:
    """One streamed delta (the first one names the assistant's role)."""
    return sse(_chunk(completion, text, finish_reason, first=first))


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
