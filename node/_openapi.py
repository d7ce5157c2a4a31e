"""``/openapi.json``: the routes with their real request bodies, auth and error envelope.

The handlers read and validate their bodies themselves (strict UTF-8 and JSON first, so every
failure is an OpenAI envelope), so FastAPI cannot see the body models; this module puts the
pydantic schemas the handlers validate with into the document. Once the engine is loaded,
``model`` is narrowed to the one name this node serves.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from ._schemas import ChatRequest, CompletionRequest, ErrorEnvelope, ReceiptBody

__all__ = ["install_openapi"]

REF = "#/components/schemas/{model}"

# route -> (body model, needs a request signature, accepts X-Tally-Receipt)
_POSTS: dict[str, tuple[type[BaseModel], bool, bool]] = {
    "/v1/chat/completions": (ChatRequest, True, True),
    "/v1/completions": (CompletionRequest, True, True),
    "/v1/tally/receipts": (ReceiptBody, False, False),
    "/v1/tally/channels/{channel}/close": (ReceiptBody, True, False),
}
_AUTH_GETS = ("/v1/tally/channels/{channel}", "/v1/tally/channels/{channel}/records/{seq}")
_ERRORS = {
    "400": "Invalid request",
    "401": "Missing, invalid, expired or reused request signature",
    "409": "Request signed for another seq or root than the channel's next (stale_request)",
    "402": "The channel cannot pay (receipt required or deposit too small)",
    "404": "Unknown model, route or record",
    "413": "Body too large",
    "429": "Rate limit",
    "503": "Engine overloaded",
}


def install_openapi(app: FastAPI) -> None:
    """Serve the document at ``/openapi.json`` (not in the schema itself)."""

    async def openapi(request: Request) -> JSONResponse:
        node = getattr(request.app.state, "node", None)
        model = node.engine.model_name if node is not None else None
        return JSONResponse(build_openapi(app, model))

    app.add_route("/openapi.json", openapi, include_in_schema=False)


def build_openapi(app: FastAPI, model: str | None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``app``; ``model`` narrows the ``model`` fields."""
    doc = get_openapi(title=app.title, version="1", routes=app.routes)
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    components["securitySchemes"] = {
        "tally": {
            "type": "http",
            "scheme": "Tally",
            "description": "A RequestAuth signature bound to this request (docs/protocol.md §4.3)",
        }
    }
    _add_model(schemas, ErrorEnvelope)
    for path, (body, auth, receipt) in _POSTS.items():
        name = _add_model(schemas, body)
        op = doc["paths"][path]["post"]
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": REF.format(model=name)}}},
        }
        _describe(op, auth=auth, receipt=receipt)
    for path in _AUTH_GETS:
        _describe(doc["paths"][path]["get"], auth=True, receipt=False)
    if model is not None:
        for name in (ChatRequest.__name__, CompletionRequest.__name__):
            schemas[name]["properties"]["model"] = {"type": "string", "enum": [model]}
    return doc


def _add_model(schemas: dict[str, Any], model: type[BaseModel]) -> str:
    schema = model.model_json_schema(ref_template=REF)
    schemas.update(schema.pop("$defs", {}))
    schemas[model.__name__] = schema
    return model.__name__


def _describe(op: dict[str, Any], *, auth: bool, receipt: bool) -> None:
    if auth:
        op["security"] = [{"tally": []}]
    if receipt:
        op.setdefault("parameters", []).append(
            {
                "name": "X-Tally-Receipt",
                "in": "header",
                "required": False,
                "description": "The countersigned receipt of the previous response (JSON).",
                "schema": {"type": "string"},
            }
        )
    envelope = {"application/json": {"schema": {"$ref": REF.format(model="ErrorEnvelope")}}}
    responses = op.setdefault("responses", {})
    responses.pop("422", None)  # FastAPI's default; this node answers 400
    for status, text in _ERRORS.items():
        responses.setdefault(status, {"description": text, "content": envelope})
