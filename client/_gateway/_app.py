"""``create_app``: the gateway's OpenAI-compatible HTTP API (Starlette).

    GET  /health                 liveness
    GET  /v1/models              every listed model with its providers and prices
    GET  /v1/models/{model}
    POST /v1/chat/completions    plain and SSE, verified and paid through a channel
    POST /v1/completions
    GET  /v1/tally/gateway       providers' measured health and the gateway's channels

Every error, including a 404 or a crash, is OpenAI's ``{"error": {...}}`` envelope. The event
loop never blocks: routing, channel leases, node calls and verification run in threads.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from tallystick.protocol import TallystickError

from ._errors import GatewayError
from ._ledger import ApiKey
from ._limits import Reservation
from ._plan import plan_request
from ._service import Failover, Gateway, Plan, Started

__all__ = ["create_app"]

log = logging.getLogger("tallystick.gateway")
THREADS = 256  # worker threads: a stream holds one while it waits for the node's next event


def create_app(gateway: Gateway) -> Starlette:
    """The ASGI app around ``gateway`` (which holds the wallet, store, channels and keys)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = THREADS
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_close_idle, gateway)
            try:
                yield
            finally:
                tasks.cancel_scope.cancel()
        await anyio.to_thread.run_sync(gateway.close)

    app = Starlette(
        routes=[
            Route("/health", _health),
            Route("/v1/models", _models),
            Route("/v1/models/{model:path}", _model),
            Route("/v1/chat/completions", _chat, methods=["POST"]),
            Route("/v1/completions", _text, methods=["POST"]),
            Route("/v1/tally/gateway", _status),
        ],
        exception_handlers={
            GatewayError: _gateway_error,
            TallystickError: _tallystick_error,
            HTTPException: _http_error,
            Exception: _crash,
        },
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    return app


async def _close_idle(gateway: Gateway) -> None:
    period = max(min(gateway.settings.idle_close_s / 4, 30.0), 0.5)
    while True:
        await anyio.sleep(period)
        try:
            closed = await anyio.to_thread.run_sync(gateway.pool.close_idle)
        except Exception as exc:  # a chain outage must not end the loop
            log.warning("closing idle channels failed: %s", exc)
            continue
        for channel in closed:
            log.info("closed idle channel %s cooperatively", channel)


# routes


async def _health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def _models(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    data = await anyio.to_thread.run_sync(gateway.models)
    return JSONResponse({"object": "list", "data": data})


async def _model(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    name = request.path_params["model"]
    for entry in await anyio.to_thread.run_sync(gateway.models):
        if entry["id"] == name:
            return JSONResponse(entry)
    raise GatewayError(404, f"no provider lists the model {name!r}", "model_not_found", "model")


async def _status(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    _authenticate(request)
    return JSONResponse(await anyio.to_thread.run_sync(_status_view, gateway))


def _status_view(gateway: Gateway) -> dict[str, Any]:
    providers = {}
    for offer in gateway.offers():
        h = gateway.router.health(offer.provider)
        providers[offer.provider] = {
            "requests": h.requests,
            "failures": h.failures,
            "ttft_s": h.ttft_s,
            "tokens_per_s": h.tokens_per_s,
            "disputed": h.disputed,
            "last_error": h.last_error,
        }
    channels = [
        {
            "id": c.hex_id,
            "provider": c.provider,
            "model": c.model,
            "deposit": c.deposit,
            "spent": gateway.pool.spent(c),
            "busy": gateway.pool.busy(c),
        }
        for c in gateway.pool.channels()
    ]
    return {"providers": providers, "channels": channels, "budget": gateway.settings.budget}


async def _chat(request: Request) -> Response:
    return await _complete(request, "chat")


async def _text(request: Request) -> Response:
    return await _complete(request, "text")


async def _complete(request: Request, kind: str) -> Response:
    gateway: Gateway = request.app.state.gateway
    key = _authenticate(request)
    raw = await request.body()
    body, route = plan_request(kind, raw, request.headers, gateway.settings)
    plan = Plan(kind, body, route, bool(body.get("stream")))
    ranked = await anyio.to_thread.run_sync(gateway.rank, plan)
    reservation = await anyio.to_thread.run_sync(gateway.admit, key, plan, ranked)
    try:
        started = await _start(gateway, plan, key, ranked)
    except BaseException:
        gateway.limits.release(reservation, 0)
        raise
    headers = {
        **gateway.limits.headers(key),
        "x-tally-provider": started.provider,
        "x-tally-channel": started.lease.channel.hex_id,
    }
    if plan.stream:
        return _EventStream(
            _stream(gateway, started, reservation),
            media_type="text/event-stream",
            headers={**headers, "cache-control": "no-cache"},
        )
    bill = None
    try:
        bill = await anyio.to_thread.run_sync(gateway.finish, started)
        content = started.response.content
    finally:
        await anyio.to_thread.run_sync(gateway.done, started)
        gateway.limits.release(reservation, _tokens(started, bill))
    if bill is not None:
        headers["x-tally-cost"] = str(bill.cost)
    return Response(content, media_type="application/json", headers=headers)


async def _start(gateway: Gateway, plan: Plan, key: ApiKey, ranked: list[Any]) -> Started:
    """Try the providers in order until one answers (streams: up to its first token)."""
    reasons = []
    for candidate in ranked:
        try:
            return await anyio.to_thread.run_sync(gateway.start, plan, key, candidate)
        except Failover as exc:
            log.warning("failover from %s: %s", candidate.listing.provider, exc)
            reasons.append(f"{candidate.listing.provider}: {exc}")
    raise GatewayError(
        503,
        f"no provider could serve {plan.route.model!r}: " + " | ".join(reasons),
        "providers_unavailable",
        type="api_error",
    )


async def _stream(
    gateway: Gateway, started: Started, reservation: Reservation
) -> AsyncIterator[bytes]:
    bill = None
    try:
        for event in started.head:
            yield event
        while True:
            event = await anyio.to_thread.run_sync(_next, started.events)
            if event is None:
                break
            yield event
    except Exception as exc:  # after the first token: the caller gets an error event
        reason = str(exc) or type(exc).__name__
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(gateway.abort, started, reason)
        yield _error_event(started, reason)
    finally:
        # Also when the caller hung up: one that closes right after [DONE] has been served a
        # verified bill, and it is charged to its key (the watcher may cancel us before the
        # node's stream ends).
        with anyio.CancelScope(shield=True):
            bill = await anyio.to_thread.run_sync(gateway.finish, started)
            await anyio.to_thread.run_sync(gateway.done, started)
        gateway.limits.release(reservation, _tokens(started, bill))


class _EventStream(StreamingResponse):
    """SSE that stops reading the node as soon as the caller hangs up.

    Starlette only notices a disconnect when a write fails, and then abandons the body
    iterator without closing it; here a watcher cancels the stream on ``http.disconnect`` and
    the iterator is always closed, so the upstream request ends (and is billed as interrupted)
    and its channel is released at once.
    """

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async with anyio.create_task_group() as tasks:

            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                tasks.cancel_scope.cancel()

            tasks.start_soon(watch)
            try:
                await self.stream_response(send)
            except OSError:
                pass  # the caller is gone
            finally:
                tasks.cancel_scope.cancel()
                with anyio.CancelScope(shield=True):
                    await self.body_iterator.aclose()  # type: ignore[attr-defined]


def _next(events: Any) -> Any:
    return next(events, None)


def _tokens(started: Started, bill: Any) -> int:
    if bill is None:
        return started.plan.route.prompt_tokens + started.plan.route.max_tokens
    record = bill.record.record
    return int(record.prompt_tokens + record.completion_tokens)


def _error_event(started: Started, reason: str) -> bytes:
    error = GatewayError(
        502,
        f"provider {started.provider} failed after the first token: {reason}. The request is "
        "billed by the interrupted-request rule (only tokens that reached the gateway).",
        "provider_interrupted",
        type="api_error",
    )
    return b"data: " + json.dumps(error.envelope()).encode() + b"\n\n"


# auth and errors


def _authenticate(request: Request) -> ApiKey:
    gateway: Gateway = request.app.state.gateway
    auth = request.headers.get("authorization", "")
    scheme, _, secret = auth.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise GatewayError(
            401,
            "no API key: send Authorization: Bearer <key> (create one with "
            "`tallystick gateway keys create NAME`)",
            "invalid_api_key",
        )
    key = gateway.ledger.authenticate(secret.strip())
    if key is None:
        raise GatewayError(401, "unknown or revoked API key", "invalid_api_key")
    return key


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return JSONResponse(exc.envelope(), status_code=exc.status, headers=exc.headers)


async def _tallystick_error(request: Request, exc: Exception) -> Response:
    # The chain or the SDK failed outside a provider's request (discovery, a key lookup).
    error = GatewayError(502, f"the gateway could not serve this: {exc}", "upstream_error",
                         type="api_error")  # fmt: skip
    return JSONResponse(error.envelope(), status_code=502)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    error = GatewayError(exc.status_code, str(exc.detail), code)
    return JSONResponse(error.envelope(), status_code=exc.status_code)


async def _crash(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s", request.url.path)
    error = GatewayError(500, f"the gateway failed: {type(exc).__name__}: {exc}", "internal_error",
                         type="api_error")  # fmt: skip
    return JSONResponse(error.envelope(), status_code=500)
