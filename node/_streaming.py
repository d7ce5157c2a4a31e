"""How a completion reaches the client, and how the node knows what did (§6).

Streaming answers through ``MeteredStream``, which knows exactly which chunks reached the
client, so a client that disconnects is billed for the ids it received and nothing more.
A plain answer (``answer_plain``) watches for the client leaving while it generates: nothing
of it was sent, so it bills the prompt only. Both sign the record through the
``Completion`` (``_metering.py``) and shape bodies with ``_openai.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from ._errors import ApiError
from ._metering import Completion
from ._openai import DONE, answer_body, delta_chunk, final_chunk, sse, usage_chunk

__all__ = ["MeteredStream", "SendChunk", "answer_plain", "run_plain", "run_stream"]

SendChunk = Callable[[bytes], Awaitable[bool]]


async def run_plain(completion: Completion, gone: asyncio.Event) -> dict[str, Any] | None:
    """Generate to the end and return the whole completion; None when the client went first.

    ``gone`` is set (and this task cancelled) by ``answer_plain`` when the client disconnects:
    the generation stops at once (the engine frees the slot at its next step). Nothing of a
    plain answer reached the client, so its record bills the prompt and no completion id
    (§6, interrupted requests).
    """
    try:
        async for event in completion.stream:
            completion.add(event)
    except asyncio.CancelledError:
        if not gone.is_set():
            await _abandon(completion)
            raise  # cancelled for another reason (shutdown)
        current = asyncio.current_task()
        if current is not None:
            current.uncancel()
    except BaseException:
        await _abandon(completion)
        raise
    if gone.is_set():
        await completion.close_engine()
        completion.ids.clear()  # the answer is never sent: only the prompt is billed
        completion.finish()
        return None
    return answer_body(completion, completion.finish())


async def _abandon(completion: Completion) -> None:
    await completion.close_engine()
    completion.abandon()  # nothing was delivered


async def answer_plain(completion: Completion, receive: Receive) -> dict[str, Any] | None:
    """``run_plain`` while watching ``receive`` (the request body already read) for the client."""
    gone = asyncio.Event()
    task = asyncio.current_task()
    assert task is not None

    async def watch() -> None:
        await _watch_disconnect(receive, gone)
        task.cancel()  # wakes run_plain wherever the engine keeps it waiting

    watcher = asyncio.create_task(watch())
    try:
        return await run_plain(completion, gone)
    finally:
        watcher.cancel()


async def run_stream(completion: Completion, send_chunk: SendChunk) -> None:
    """Stream deltas; bill exactly the prompt and the ids whose chunk was delivered."""
    if not await send_chunk(delta_chunk(completion, "", None, first=True)):
        await completion.close_engine()
        completion.abandon()  # gone before the engine ran
        return
    delivered, error = True, None
    try:
        async for event in completion.stream:
            if not await send_chunk(delta_chunk(completion, event.text, None, event=event)):
                delivered = False
                break
            completion.add(event)
    except ApiError as exc:
        error = exc
    finally:
        await completion.close_engine()
        stored = completion.finish()  # no await inside: runs to the end even when cancelled
    if error is not None:
        delivered = await send_chunk(sse(error.envelope()))
    if delivered:
        # The record rides on the finish chunk, whose ``choices`` is not empty, so a plain
        # OpenAI loop (``c.choices[0]``) works; the usage-only chunk only when asked (§8).
        await send_chunk(final_chunk(completion, stored))
        if completion.include_usage:
            await send_chunk(usage_chunk(completion))
        await send_chunk(DONE)


class MeteredStream(Response):
    """An SSE response that tells its producer whether each chunk reached the client."""

    def __init__(
        self, produce: Callable[[SendChunk], Awaitable[None]], headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status_code=200, media_type="text/event-stream")
        self._produce = produce
        self._extra_headers = headers or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.Event()
        watcher = asyncio.create_task(_watch_disconnect(receive, gone))
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ]
        headers += [(k.encode(), v.encode()) for k, v in self._extra_headers.items()]

        async def send_chunk(data: bytes) -> bool:
            return await _send_metered(send, data, gone)

        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await self._produce(send_chunk)
            if not gone.is_set():
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass
        finally:
            watcher.cancel()


async def _send_metered(send: Send, data: bytes, gone: asyncio.Event) -> bool:
    """Send one chunk; True when the transport accepted it (so the client is billed for it).

    A send still blocked (the transport's buffer is full: the client stopped reading) when
    the client goes is abandoned and not billed: those bytes never left the node. After an
    accepted send the loop runs once, so a disconnect that arrived meanwhile stops the
    stream before the next token is sent: at most one chunk goes out after the server saw
    the client go.
    """
    if gone.is_set():
        return False
    sending = asyncio.ensure_future(
        send({"type": "http.response.body", "body": data, "more_body": True})
    )
    waiting = asyncio.ensure_future(gone.wait())
    try:
        await asyncio.wait((sending, waiting), return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiting.cancel()
    if not sending.done():
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await sending
        return False
    error = sending.exception()
    if error is not None:
        gone.set()
        if isinstance(error, OSError):
            return False
        raise error  # not a transport error: a bug, let it surface
    await asyncio.sleep(0)  # let a pending http.disconnect reach the watcher
    return True


async def _watch_disconnect(receive: Receive, gone: asyncio.Event) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            gone.set()
            return
