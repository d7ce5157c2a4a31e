"""The FastAPI app: ``create_app(settings)``, its error handlers and its middlewares.

The lifespan builds the node's state (``_state.build_state``: engine, chain client, ledger,
payment gate, settlement worker) and puts it on ``app.state.node``; each part can be
injected (unit tests pass a FakeEngine and an in-memory chain). The routes live in
``_routes.py``. Every error leaves as an OpenAI envelope, never a stack trace.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from eth_account.signers.local import LocalAccount
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from tallystick.protocol import ChainError

from ._chain import ChainView
from ._errors import ApiError, chain_unavailable
from ._ledger import LedgerStore
from ._metrics import NodeMetrics
from ._openapi import install_openapi
from ._routes import install_routes
from ._settings import Settings
from ._state import build_state, heartbeat

if TYPE_CHECKING:
    from .engines import Engine

__all__ = ["create_app"]

log = logging.getLogger("tallystick.node")


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
        node = await build_state(settings, metrics, engine, chain, store, account)
        app.state.node = node
        if run_worker:
            node.worker.start()
        beating = asyncio.create_task(heartbeat(node), name="heartbeat")
        log.info("serving model=%s provider=%s", node.engine.model_name, node.provider)
        try:
            yield
        finally:
            beating.cancel()
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
    install_routes(app)
    app.add_middleware(_BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(_CountRequests, metrics=metrics)
    return app


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
