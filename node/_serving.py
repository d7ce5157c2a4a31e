"""One metered completion: count the prompt, reserve, generate, sign the record, answer.

Shared by ``/v1/chat/completions`` and ``/v1/completions``, plain and streaming. Streaming
answers through ``MeteredStream``, which knows exactly which chunks reached the client, so a
client that disconnects is billed for the ids it received and nothing more (§6).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send
from tallystick.protocol import (
    ProtocolError,
    encode_proof,
    params_units,
)

from ._earnings import cost_added
from ._errors import ApiError
from ._schemas import ChatRequest, CompletionRequest, receipt_from_header
from ._types import ChannelInfo, Provenance, StoredRecord

if TYPE_CHECKING:
    from ._gate import Authorized, Reservation
    from ._ratelimit import Ticket
    from ._state import NodeState
    from .engines import Engine, Prompt, SamplingParams, TokenEvent

__all__ = [
    "Completion",
    "MeteredStream",
    "answer_plain",
    "prepare",
    "run_plain",
    "run_stream",
]

Request = ChatRequest | CompletionRequest
SendChunk = Callable[[bytes], Awaitable[bool]]


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
        self.text.append(event.text)
        self.finish_reason = event.finish_reason or self.finish_reason

    def finish(self) -> StoredRecord:
        """Sign and store the record (and its timings) for the ids collected; observe metrics."""
        node = self.node
        t = self.timings()
        stored = node.gate.finalize(
            self.reservation, self.request.model, self.prompt.ids, self.ids, t, self.provenance()
        )
        self.ticket.settle(len(self.prompt.ids) + len(self.ids))
        channel = self.reservation.channel
        rec = stored.signed.record
        added = cost_added(
            channel, (rec.input_tokens, rec.output_tokens), len(self.prompt.ids), len(self.ids)
        )
        node.metrics.observe_request(
            self.request.model,
            len(self.prompt.ids),
            t["ttft_ms"] / 1e3,
            tuple(b - a for a, b in zip(self.stamps, self.stamps[1:], strict=False)),
            t["total_ms"] / 1e3,
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
        self.ticket.settle(0)

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

    # bodies --------------------------------------------------------------------------------

    def body(self, stored: StoredRecord) -> dict[str, Any]:
        """The non-streaming response."""
        text = "".join(self.text)
        if self.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": self.finish_reason,
                "logprobs": None,
            }
        else:
            choice = {
                "index": 0,
                "text": text,
                "finish_reason": self.finish_reason,
                "logprobs": None,
            }
        return {
            **self._head(stream=False),
            "choices": [choice],
            "usage": self.usage(),
            "tallystick": stored.bill().to_json(),
        }

    def chunk(self, text: str, finish_reason: str | None, *, first: bool = False) -> bytes:
        return sse(self._chunk(text, finish_reason, first=first))

    def _chunk(self, text: str, finish_reason: str | None, *, first: bool) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = (
                {"role": "assistant", "content": text}
                if first
                else ({"content": text} if text else {})
            )
            choice: dict[str, Any] = {
                "index": 0,
                "delta": delta,
                "finish_reason": finish_reason,
                "logprobs": None,
            }
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}
        return {**self._head(stream=True), "choices": [choice]}

    def final_chunk(self, stored: StoredRecord) -> bytes:
        """The chunk with ``finish_reason``; it carries the signed record (§8)."""
        chunk = self._chunk("", self.finish_reason or "stop", first=False)
        return sse({**chunk, "tallystick": stored.bill().to_json()})

    def usage_chunk(self) -> bytes:
        """OpenAI's usage-only chunk (empty ``choices``): only when the request asked for it."""
        return sse({**self._head(stream=True), "choices": [], "usage": self.usage()})

    @property
    def include_usage(self) -> bool:
        options = self.request.stream_options
        return options is not None and options.include_usage

    def _head(self, *, stream: bool) -> dict[str, Any]:
        if self.chat:
            kind = "chat.completion.chunk" if stream else "chat.completion"
        else:
            kind = "text_completion"
        return {
            "id": self.response_id,
            "object": kind,
            "created": self.created,
            "model": self.request.model,
            "system_fingerprint": None,
        }


def _start_engine(
    engine: Engine, prompt: Prompt, params: SamplingParams
) -> AsyncIterator[TokenEvent]:
    # generate() refuses synchronously (queue full, prompt too long), before any byte is sent.
    from .engines import EngineError, EngineOverloaded, EngineStopped, PromptTooLong

    try:
        return _translated(engine.generate(prompt, params))
    except EngineOverloaded as exc:
        raise ApiError(
            503,
            f"the engine's queue is full ({exc}); retry shortly",
            code="engine_overloaded",
            headers={"retry-after": "1"},
        ) from exc
    except EngineStopped as exc:
        raise ApiError(503, "the engine is not running", code="engine_stopped") from exc
    except PromptTooLong as exc:
        raise ApiError(400, str(exc), param="messages", code="context_length_exceeded") from exc
    except EngineError as exc:
        raise engine_failure(exc) from exc


def engine_failure(exc: Exception) -> ApiError:
    """An engine error as the client sees it: the upstream server's fault is a 502/503."""
    from .engines import UpstreamError, UpstreamUnavailable

    if isinstance(exc, UpstreamUnavailable):
        return ApiError(
            503,
            f"the upstream inference server is unavailable: {exc}",
            type="server_error",
            code="upstream_unavailable",
            headers={"retry-after": "5"},
        )
    if isinstance(exc, UpstreamError):
        return ApiError(
            502,
            f"the upstream inference server failed: {exc}",
            type="server_error",
            code="upstream_error",
        )
    return ApiError(500, f"the engine failed: {exc}", type="server_error", code="engine_error")


async def _translated(stream: AsyncIterator[TokenEvent]) -> AsyncIterator[TokenEvent]:
    from .engines import EngineError

    try:
        async for event in stream:
            yield event
    except EngineError as exc:
        raise engine_failure(exc) from exc
    finally:
        await stream.aclose()  # type: ignore[attr-defined]


def sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


# admission ---------------------------------------------------------------------------------


async def prepare(
    node: NodeState, request: Request, authorized: Authorized, receipt_header: str | None
) -> Completion:
    """Validate, apply rate limits and the credit rule to a signed request; admit it."""
    engine = node.engine
    if request.model != engine.model_name:
        raise ApiError(
            404,
            f"the model {request.model!r} does not exist on this node",
            param="model",
            code="model_not_found",
        )
    request.check_n()
    channel = authorized.channel
    node.gate.check_model(channel, request.model)
    node.gate.arrive(channel.channel_id)  # GET .../records/{seq} says "pending" meanwhile
    try:
        return await _admit(node, request, authorized, receipt_header)
    finally:
        node.gate.leave(channel.channel_id)  # reserved (now in flight) or refused


async def _admit(
    node: NodeState, request: Request, authorized: Authorized, receipt_header: str | None
) -> Completion:
    from .engines import Prompt, SamplingParams

    engine = node.engine
    channel = authorized.channel
    if receipt_header:
        await node.gate.accept_receipt(receipt_from_header(receipt_header))
    chat = isinstance(request, ChatRequest)
    # The engine may reuse the KV of this channel's earlier prompts, never another's.
    prompt = replace(_prompt(engine, request, Prompt), cache_scope=channel.channel_id)
    max_tokens = _max_tokens(node, request, len(prompt.ids), channel)
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        # Every record names its seed (§10.2): the node picks one when the client did not.
        seed=request.seed if request.seed is not None else secrets.randbits(63),
        stop=request.stop_tuple(),
    )
    ticket = node.limiter.admit(channel.channel_id, len(prompt.ids) + max_tokens)
    try:
        reservation = await node.gate.reserve(authorized, len(prompt.ids), max_tokens)
    except BaseException:
        ticket.settle(0)
        raise
    try:
        stream = _start_engine(engine, prompt, params)
    except BaseException:
        node.gate.release(reservation)
        ticket.settle(0)
        raise
    return Completion(node, request, chat, prompt, params, reservation, ticket, stream)


def _prompt(engine: Engine, request: Request, prompt_type: type[Prompt]) -> Prompt:
    try:
        if isinstance(request, ChatRequest):
            messages = request.template_messages()
            return prompt_type(engine.counter.chat_prompt_ids(messages), messages=messages)
        text = request.text()
        return prompt_type(engine.counter.text_prompt_ids(text), text=text)
    except ProtocolError as exc:
        param = "messages" if isinstance(request, ChatRequest) else "prompt"
        raise ApiError(400, str(exc), param=param, code="invalid_prompt") from exc


def _max_tokens(node: NodeState, request: Request, prompt_tokens: int, channel: ChannelInfo) -> int:
    """The request's ``max_tokens``; without one, the node's default capped by the context
    window and by what the deposit can still pay (§8.1), sent back in ``x-tally-max-tokens``."""
    context = node.engine.context_length
    room = context - prompt_tokens
    asked = request.limit()
    if asked is None:
        if room < 1:
            raise ApiError(
                400,
                f"the prompt has {prompt_tokens} tokens and the model's context "
                f"window is {context} tokens",
                param="messages",
                code="context_length_exceeded",
            )
        payable = node.gate.payable_output(channel, prompt_tokens)
        # At least 1: a deposit that cannot pay one token is the gate's 402 insufficient_deposit.
        return max(min(node.settings.default_max_tokens, room, payable), 1)
    if prompt_tokens + asked > context:
        raise ApiError(
            400,
            f"this model's context window is {context} tokens; the prompt has {prompt_tokens} "
            f"and max_tokens asks for {asked} more ({prompt_tokens + asked}); lower max_tokens "
            "or shorten the prompt",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return asked


# running -----------------------------------------------------------------------------------


async def run_plain(done: Completion, gone: asyncio.Event) -> dict[str, Any] | None:
    """Generate to the end and return the whole completion; None when the client went first.

    ``gone`` is set (and this task cancelled) by ``answer_plain`` when the client disconnects:
    the generation stops at once (the engine frees the slot at its next step). Nothing of a
    plain answer reached the client, so its record bills the prompt and no completion id
    (§6, interrupted requests).
    """
    try:
        async for event in done.stream:
            done.add(event)
    except asyncio.CancelledError:
        if not gone.is_set():
            await _abandon(done)
            raise  # cancelled for another reason (shutdown)
        current = asyncio.current_task()
        if current is not None:
            current.uncancel()
    except BaseException:
        await _abandon(done)
        raise
    if gone.is_set():
        await done.close_engine()
        done.ids.clear()  # the answer is never sent: only the prompt is billed
        done.finish()
        return None
    return done.body(done.finish())


async def _abandon(done: Completion) -> None:
    await done.close_engine()
    done.abandon()  # nothing was delivered


async def answer_plain(done: Completion, receive: Receive) -> dict[str, Any] | None:
    """``run_plain`` while watching ``receive`` (the request body already read) for the client."""
    gone = asyncio.Event()
    task = asyncio.current_task()
    assert task is not None

    async def watch() -> None:
        await _watch_disconnect(receive, gone)
        task.cancel()  # wakes run_plain wherever the engine keeps it waiting

    watcher = asyncio.create_task(watch())
    try:
        return await run_plain(done, gone)
    finally:
        watcher.cancel()


async def run_stream(done: Completion, send_chunk: SendChunk) -> None:
    """Stream deltas; bill exactly the prompt and the ids whose chunk was delivered."""
    if not await send_chunk(done.chunk("", None, first=True)):
        await done.close_engine()
        done.abandon()  # gone before the engine ran
        return
    delivered, error = True, None
    try:
        async for event in done.stream:
            if not await send_chunk(done.chunk(event.text, None)):
                delivered = False
                break
            done.add(event)
    except ApiError as exc:
        error = exc
    finally:
        await done.close_engine()
        stored = done.finish()  # no await inside: runs to the end even when cancelled
    if error is not None:
        delivered = await send_chunk(sse(error.envelope()))
    if delivered:
        # The record rides on the finish chunk, whose ``choices`` is not empty, so a plain
        # OpenAI loop (``c.choices[0]``) works; the usage-only chunk only when asked (§8).
        await send_chunk(done.final_chunk(stored))
        if done.include_usage:
            await send_chunk(done.usage_chunk())
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
