"""Admission: from a signed, parsed request to a ``Completion`` generating on the engine.

``admit`` checks the model, takes a piggybacked receipt (``X-Tally-Receipt``), counts the
prompt, picks ``max_tokens`` (§8.1), applies the rate limits, reserves the worst case under
the credit rule (the payment gate) and starts the engine. Whatever it took is given back when
a later step refuses. The engine's errors become the client's here (``engine_failure``),
before any byte is sent and while the ids stream.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import TYPE_CHECKING, NamedTuple

from tallystick.protocol import ChannelState, ProtocolError

from ._errors import ApiError
from ._metering import Completion, Request
from ._schemas import ChatRequest, receipt_from_header

if TYPE_CHECKING:
    from ._gate import Authorized
    from ._state import NodeState
    from .engines import Engine, Prompt, SamplingParams, TokenEvent

__all__ = ["admit", "engine_failure", "start_engine"]


async def admit(
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
    if request.logprob_count() is not None and not getattr(node.engine, "supports_logprobs", False):
        raise ApiError(
            400,
            "logprobs are not available from this node's engine (the in-process transformers "
            "engine returns them); remove logprobs/top_logprobs",
            param="logprobs",
            code="unsupported_parameter",
        )
    channel = authorized.channel
    node.gate.check_model(channel, request.model)
    node.gate.arrive(channel.channel_id)  # GET .../records/{seq} says "pending" meanwhile
    try:
        return await _reserve(node, request, authorized, receipt_header)
    finally:
        node.gate.leave(channel.channel_id)  # reserved (now in flight) or refused


async def _reserve(
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
        logprobs=request.logprob_count(),
    )
    ticket = node.limiter.admit(channel.channel_id, len(prompt.ids) + max_tokens)
    try:
        reservation = await node.gate.reserve(authorized, len(prompt.ids), max_tokens)
    except BaseException:
        ticket.recount(0)
        raise
    try:
        stream = start_engine(engine, prompt, params)
    except BaseException:
        node.gate.release(reservation)
        ticket.recount(0)
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


def _max_tokens(
    node: NodeState, request: Request, prompt_tokens: int, channel: ChannelState
) -> int:
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


# the engine --------------------------------------------------------------------------------


def start_engine(
    engine: Engine, prompt: Prompt, params: SamplingParams
) -> AsyncIterator[TokenEvent]:
    """The engine's stream, its errors translated; refusals come before any byte is sent."""
    from .engines import EngineError

    try:
        # generate() refuses synchronously (queue full, prompt too long, not running).
        return _translated(engine.generate(prompt, params))
    except EngineError as exc:
        raise engine_failure(exc) from exc


class _Refusal(NamedTuple):
    """How one engine error reaches the client (``message`` formatted with ``exc``)."""

    error: str  # the class's name in tallystick.node.engines (imported lazily: torch)
    status: int
    code: str
    message: str
    type: str | None = None
    param: str | None = None
    retry_after: str | None = None


# Most specific first: UpstreamUnavailable is an UpstreamError.
_REFUSALS = (
    _Refusal(
        "EngineOverloaded",
        503,
        "engine_overloaded",
        "the engine's queue is full ({exc}); retry shortly",
        retry_after="1",
    ),
    _Refusal("EngineStopped", 503, "engine_stopped", "the engine is not running"),
    _Refusal("PromptTooLong", 400, "context_length_exceeded", "{exc}", param="messages"),
    _Refusal(
        "UpstreamUnavailable",
        503,
        "upstream_unavailable",
        "the upstream inference server is unavailable: {exc}",
        type="server_error",
        retry_after="5",
    ),
    _Refusal(
        "UpstreamError",
        502,
        "upstream_error",
        "the upstream inference server failed: {exc}",
        type="server_error",
    ),
)


def engine_failure(exc: Exception) -> ApiError:
    """An engine error as the client sees it: a full queue or a stopped engine is a 503, a
    prompt too long a 400, the upstream server's fault a 502/503, anything else a 500."""
    from . import engines

    for refusal in _REFUSALS:
        if isinstance(exc, getattr(engines, refusal.error)):
            return ApiError(
                refusal.status,
                refusal.message.format(exc=exc),
                code=refusal.code,
                param=refusal.param,
                type=refusal.type,
                headers={"retry-after": refusal.retry_after} if refusal.retry_after else None,
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
