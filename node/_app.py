"""The FastAPI app: ``create_app(settings)`` and its routes (docs/protocol.md §8).

The lifespan builds the engine, chain client, ledger, payment gate and settlement worker and
puts them on ``app.state.node``; each can be injected (unit tests pass a FakeEngine and an
in-memory chain). Every error leaves as an OpenAI envelope, never a stack trace.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from eth_account.signers.local import LocalAccount
from fastapi import FastAPI, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from tallystick.protocol import ChainError, ClosingReceipt, Domain, model_id

from ._chain import ChainView, ChannelCache
from ._dashboard import install_dashboard
from ._errors import ApiError, chain_unavailable
from ._gate import Authorized, PaymentGate
from ._keys import load_account
from ._ledger import LedgerStore, open_ledger
from ._metrics import CONTENT_TYPE, NodeMetrics
from ._openapi import install_openapi
from ._ratelimit import RateLimiter
from ._schemas import INT64_MAX, ChatRequest, CompletionRequest, parse_body, receipt_from_body
from ._serving import MeteredStream, answer_plain, prepare, run_stream
from ._settings import Settings
from ._settlement import SettlementWorker

if TYPE_CHECKING:
    from .engines import Engine

__all__ = ["NodeState", "create_app"]

log = logging.getLogger("tallystick.node")

CLIENT_CLOSED = 499


@dataclass
class NodeState:
    """Everything a request handler needs, built by the lifespan."""

    settings: Settings
    engine: Engine
    chain: ChainView
    ledger: LedgerStore
    gate: PaymentGate
    limiter: RateLimiter
    metrics: NodeMetrics
    worker: SettlementWorker
    domain: Domain
    provider: str


def create_app(
    settings: Settings,
    *,
    engine: Engine | None = None,
    chain: ChainView | None = None,
    store: LedgerStore | None = None,
    account: LocalAccount | None = None,
    run_worker: bool = True,
) -> FastAPI:
    """The node's ASGI app; anything not injected is built from ``settings`` at startup."""
    metrics = NodeMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        node = await _build(settings, metrics, engine, chain, store, account)
        app.state.node = node
        if run_worker:
            node.worker.start()
        heartbeat = asyncio.create_task(_heartbeat(node), name="heartbeat")
        log.info("serving model=%s provider=%s", node.engine.model_name, node.provider)
        try:
            yield
        finally:
            heartbeat.cancel()
            await node.worker.stop()
            await node.engine.stop()
            if store is None:
                node.ledger.close()

    app = FastAPI(
        title="tallystick-node", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    install_openapi(app)
    app.state.metrics = metrics
    _install_errors(app)
    _install_routes(app)
    app.add_middleware(_BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(_CountRequests, metrics=metrics)
    return app


async def _build(
    settings: Settings,
    metrics: NodeMetrics,
    engine: Engine | None,
    chain: ChainView | None,
    store: LedgerStore | None,
    account: LocalAccount | None,
) -> NodeState:
    account = account or load_account(settings)
    if chain is None:
        from ._escrow import EscrowChain

        chain = await EscrowChain.connect(settings, account)
    ledger = store or open_ledger(settings.ledger_location)
    if engine is None:
        from ._engine_factory import build_engine

        engine = await build_engine(settings)
    log.info("loading model %s", engine.model_name)
    started = time.perf_counter()
    await engine.start()
    log.info("model ready in %.1fs", time.perf_counter() - started)
    metrics.watch_engine(engine.model_name, engine.stats)
    metrics.watch_rpc(chain.rpc_failures)
    metrics.watch_channels(ledger.channels)
    cache = ChannelCache(chain, ledger, settings.channel_cache_ttl)
    gate = PaymentGate(
        account=account,
        domain=chain.domain,
        cache=cache,
        ledger=ledger,
        credit_requests=settings.credit_requests,
        replica_ttl=settings.replica_ttl,
    )
    worker = SettlementWorker(
        chain=chain,
        ledger=ledger,
        cache=cache,
        metrics=metrics,
        settings=settings,
        owner=gate.owner,
    )
    return NodeState(
        settings,
        engine,
        chain,
        ledger,
        gate,
        RateLimiter(settings.rpm_limit, settings.tpm_limit),
        metrics,
        worker,
        chain.domain,
        account.address,
    )


async def _heartbeat(node: NodeState) -> None:
    # The gate's reservations stay counted by every replica only while this beats.
    while True:
        await asyncio.sleep(node.settings.replica_ttl / 3)
        try:
            node.gate.heartbeat()
        except Exception:
            log.exception("ledger heartbeat failed; retrying")


# errors ------------------------------------------------------------------------------------


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return JSONResponse(exc.envelope(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(ChainError)
    async def chain_error(request: Request, exc: ChainError) -> Response:
        # A route that needed the chain and found it down: transient, say when to retry.
        log.warning("chain error on %s: %s", request.url.path, exc)
        err = chain_unavailable(exc)
        return JSONResponse(err.envelope(), status_code=err.status, headers=err.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            err = ApiError(
                404, f"no route {request.method} {request.url.path}", code="unknown_route"
            )
        elif exc.status_code == 405:
            err = ApiError(
                405,
                f"method {request.method} is not allowed on {request.url.path}",
                code="method_not_allowed",
            )
        else:
            err = ApiError(exc.status_code, str(exc.detail))
        return JSONResponse(err.envelope(), status_code=err.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0]
        param = str(first.get("loc", ("", ""))[-1]) or None
        err = ApiError(
            400,
            f"invalid value for {param}: {first.get('msg', 'bad input')}",
            param=param,
            code="invalid_value",
        )
        return JSONResponse(err.envelope(), status_code=400)

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> Response:
        log.error("unhandled error on %s: %r", request.url.path, exc, exc_info=exc)
        err = ApiError(
            500,
            "internal error; the node logged the details",
            type="server_error",
            code="internal_error",
        )
        return JSONResponse(err.envelope(), status_code=500)


class _BodyLimit:
    """413 for a body over ``limit`` bytes, by Content-Length or while it streams in."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await _too_large(self.limit, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise ApiError(
                    413, f"the request body exceeds {self.limit} bytes", code="request_too_large"
                )
            return message

        await self.app(scope, limited, send)


async def _too_large(limit: int, send: Send) -> None:
    body = JSONResponse(
        ApiError(
            413, f"the request body exceeds {limit} bytes", code="request_too_large"
        ).envelope(),
        status_code=413,
    )
    await body({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


class _CountRequests:
    """Counts responses by route and status (pure ASGI: streaming passes straight through)."""

    def __init__(self, app: ASGIApp, metrics: NodeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counted(message: Message) -> None:
            route = scope.get("route")
            if message["type"] == "http.response.start" and route is not None:
                # No route: a scanner's 404s would make one series per path it tried.
                self.metrics.requests.labels(route.path, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counted)


# routes ------------------------------------------------------------------------------------


def _node(request: Request) -> NodeState:
    node: NodeState = request.app.state.node
    return node


def _install_routes(app: FastAPI) -> None:
    app.post("/v1/chat/completions")(_chat)
    app.post("/v1/completions")(_completions)
    app.get("/v1/models")(_models)
    app.get("/v1/tally/tokenizer/{model}")(_tokenizer)
    app.post("/v1/tally/receipts")(_receipts)
    app.get("/v1/tally/channels/{channel}")(_channel)
    app.get("/v1/tally/channels/{channel}/records/{seq}")(_record)
    app.post("/v1/tally/channels/{channel}/close")(_close)
    app.get("/health")(_health)
    app.get("/metrics")(_metrics)
    install_dashboard(app)


async def _chat(request: Request) -> Any:
    return await _complete(request, ChatRequest)


async def _completions(request: Request) -> Any:
    return await _complete(request, CompletionRequest)


async def _complete(request: Request, kind: type[ChatRequest] | type[CompletionRequest]) -> Any:
    node = _node(request)
    raw = await request.body()
    authorized = await _authenticate(request, raw)  # before anything reads the body
    body = parse_body(raw, kind)
    done = await prepare(node, body, authorized, request.headers.get("x-tally-receipt"))
    # The limit the node applied, said out loud (it chose it when the request named none).
    headers = {**done.ticket.headers, "x-tally-max-tokens": str(done.params.max_tokens)}
    if body.stream:
        return MeteredStream(lambda send_chunk: run_stream(done, send_chunk), headers)
    answer = await answer_plain(done, request.receive)
    if answer is None:  # the client went away: nobody reads this (nginx's "client closed")
        return Response(status_code=CLIENT_CLOSED)
    return JSONResponse(answer, headers=headers)


def _audit_terms(engine: Any) -> dict[str, Any]:
    """What an audit of this node's records can check (§10.5): the weights and the sampler.

    Only the in-process engine samples with the seeded sampler; in front of an upstream
    engine ``audit`` is ``"none"``, so no client believes an audit that cannot hold."""
    model_hash = getattr(engine, "model_hash", None)
    sampler = getattr(engine, "sampler", None)
    return {
        "model_hash": None if model_hash is None else "0x" + model_hash.hex(),
        "audit": "seeded" if sampler and model_hash else "none",
        "sampler": sampler,
    }


async def _models(request: Request) -> Any:
    node = _node(request)
    engine = node.engine
    try:
        listing = await node.chain.listing(model_id(engine.model_name))
    except ChainError as exc:
        log.warning("cannot read the listing: %s", exc)
        listing = None
    return {
        "object": "list",
        "data": [
            {
                "id": engine.model_name,
                "object": "model",
                "created": 0,
                "owned_by": node.provider,
                "context_length": engine.context_length,
                "tokenizer_hash": "0x" + engine.tokenizer_bundle.hash().hex(),
                "pricing": None
                if listing is None
                else {
                    "input_per_million": listing.input_price_per_m,
                    "output_per_million": listing.output_price_per_m,
                    "token": listing.token,
                },
                "listed": listing is not None and listing.active,
                **_audit_terms(engine),
            }
        ],
    }


async def _tokenizer(request: Request, model: str) -> Response:
    engine = _node(request).engine
    if model != engine.model_name:
        raise ApiError(
            404,
            f"the model {model!r} does not exist on this node",
            param="model",
            code="model_not_found",
        )
    return Response(
        engine.tokenizer_bundle.canonical_bytes(), media_type="application/json; charset=utf-8"
    )


async def _receipts(request: Request) -> Any:
    # No request signature: the receipt is itself the client's signature over this action,
    # and storing the highest one a client signed is all it can do (docs/protocol.md §8).
    signed = receipt_from_body(await request.body())
    stored = await _node(request).gate.accept_receipt(signed)
    return {"status": "stored", "channelId": "0x" + stored.channel_id.hex(), "seq": stored.seq}


async def _channel(request: Request, channel: str) -> Any:
    node = _node(request)
    info = await _channel_auth(request, channel)
    return node.gate.view(await node.gate.fresh(info.channel_id))


async def _record(
    request: Request, channel: str, seq: Annotated[int, Path(ge=1, le=INT64_MAX)]
) -> Any:
    node = _node(request)
    info = await _channel_auth(request, channel)
    stored = node.ledger.get_record(info.channel_id, seq)
    if stored is None and node.gate.record_pending(info.channel_id, seq):
        raise ApiError(
            404,
            f"record seq {seq} is not signed yet: a request on this channel is being served; "
            "retry shortly",
            param="seq",
            code="record_pending",
            headers={"retry-after": "1"},
        )
    if stored is None:
        # Nothing in flight could become it: this node never served that request (§6).
        raise ApiError(
            404, f"no record seq {seq} on this channel", param="seq", code="record_not_found"
        )
    return {"model": stored.model, **stored.bill().to_json()}


async def _close(request: Request, channel: str) -> Any:
    node = _node(request)
    info = await _channel_auth(request, channel)
    signed = receipt_from_body(await request.body())
    if signed.receipt.channel_id != info.channel_id:
        raise ApiError(
            400, "the receipt is for another channel", param="channelId", code="invalid_receipt"
        )
    stored, provider_sig = await node.gate.countersign_close(signed)
    return ClosingReceipt(stored.signed, provider_sig, stored.seq).to_json()


async def _channel_auth(request: Request, channel: str) -> Any:
    authorized = await _authenticate(request, await request.body())
    info = authorized.channel
    if "0x" + info.channel_id.hex() != channel.lower():
        raise ApiError(401, "the request is signed for another channel", code="invalid_api_key")
    return info


async def _authenticate(request: Request, body: bytes) -> Authorized:
    """The request's signature (§4.3) over its method, route and exact body bytes."""
    return await _node(request).gate.authenticate(
        request.headers.get("authorization"), request.method, request.url.path, body
    )


async def _health(request: Request) -> Any:
    node = _node(request)
    return {
        "status": "ok",
        "model": node.engine.model_name,
        "provider": node.provider,
        "chainId": node.domain.chain_id,
        "escrow": node.domain.escrow,
        "engine": node.engine.stats(),
    }


async def _metrics(request: Request) -> Response:
    node = _node(request)
    node.worker.refresh_unclaimed_metric()
    return Response(node.metrics.exposition(), media_type=CONTENT_TYPE)
