"""The node's ten routes (docs/protocol.md §8) and ``install_routes(app)``.

The two completion routes authenticate, parse and hand the request to ``admission``;
the tally routes (receipts, a channel's view, its records, a cooperative close) go to the
payment gate; ``/v1/models``, the tokenizer, ``/health`` and ``/metrics`` describe the node.
Every refusal is an ``ApiError`` (the app turns it into an OpenAI envelope).
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import FastAPI, Path, Request, Response
from fastapi.responses import JSONResponse
from tallystick.protocol import ChainError, ClosingReceipt, model_id

from ._admission import admit
from ._channel_view import channel_view
from ._dashboard import install_dashboard
from ._errors import ApiError
from ._gate import Authorized
from ._metrics import CONTENT_TYPE
from ._schemas import INT64_MAX, ChatRequest, CompletionRequest, parse_body, receipt_from_body
from ._state import node_of
from ._streaming import MeteredStream, answer_plain, run_stream

__all__ = ["install_routes"]

log = logging.getLogger("tallystick.node")

CLIENT_CLOSED = 499


def install_routes(app: FastAPI) -> None:
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
    node = node_of(request)
    raw = await request.body()
    authorized = await _authenticate(request, raw)  # before anything reads the body
    body = parse_body(raw, kind)
    admitted = await admit(node, body, authorized, request.headers.get("x-tally-receipt"))
    # The limit the node applied, said out loud (it chose it when the request named none).
    headers = {**admitted.ticket.headers, "x-tally-max-tokens": str(admitted.params.max_tokens)}
    if body.stream:
        return MeteredStream(lambda send_chunk: run_stream(admitted, send_chunk), headers)
    answer = await answer_plain(admitted, request.receive)
    if answer is None:  # the client went away: nobody reads this (nginx's "client closed")
        return Response(status_code=CLIENT_CLOSED)
    return JSONResponse(answer, headers=headers)


def _audit_terms(engine: Any) -> dict[str, Any]:
    """What an audit of this node's records can check (§10.5): the weights and the sampler.

    ``"seeded"``: the in-process engine's seeded sampler and logit proof, every record.
    ``"greedy"``: llama.cpp's own ids (native ``/completion``), temperature-0 records only,
    against the measured greedy tolerance. ``"none"`` elsewhere (vLLM, ``transformers serve``,
    llama_cpp.server: not measured or not replayable), so no client believes an audit that
    cannot hold."""
    model_hash = getattr(engine, "model_hash", None)
    sampler = getattr(engine, "sampler", None)
    audit = "none"
    if model_hash and sampler:
        audit = "seeded"
    elif model_hash and getattr(engine, "greedy_auditable", False):
        audit = "greedy"
    return {
        "model_hash": None if model_hash is None else "0x" + model_hash.hex(),
        "audit": audit,
        "sampler": sampler,
    }


async def _models(request: Request) -> Any:
    node = node_of(request)
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
    engine = node_of(request).engine
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
    stored = await node_of(request).gate.accept_receipt(signed)
    return {"status": "stored", "channelId": "0x" + stored.channel_id.hex(), "seq": stored.seq}


async def _channel(request: Request, channel: str) -> Any:
    node = node_of(request)
    info = await _channel_auth(request, channel)
    fresh = await node.gate.fresh(info.channel_id)
    return channel_view(fresh, node.ledger, node.gate.credit_requests)


async def _record(
    request: Request, channel: str, seq: Annotated[int, Path(ge=1, le=INT64_MAX)]
) -> Any:
    node = node_of(request)
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
    node = node_of(request)
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
    return await node_of(request).gate.authenticate(
        request.headers.get("authorization"), request.method, request.url.path, body
    )


async def _health(request: Request) -> Any:
    node = node_of(request)
    return {
        "status": "ok",
        "model": node.engine.model_name,
        "provider": node.provider,
        "chainId": node.domain.chain_id,
        "escrow": node.domain.escrow,
        "engine": node.engine.stats(),
    }


async def _metrics(request: Request) -> Response:
    node = node_of(request)
    node.worker.refresh_unclaimed_metric()
    return Response(node.metrics.exposition(), media_type=CONTENT_TYPE)
