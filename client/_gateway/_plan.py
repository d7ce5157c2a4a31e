"""Reading a caller's request: the body checked, routing hints taken out, tokens estimated.

Routing hints are ignored by plain clients and never reach a node: the headers
``X-Tally-Provider``, ``X-Tally-Max-Input-Price``, ``X-Tally-Max-Output-Price``, or the body
field ``"tallystick": {"provider": ..., "max_input_price": ..., "max_output_price": ...}``
(prices per million tokens in base units; the header wins over the body).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tallystick.protocol import TallystickError, loads_untrusted

from ._errors import GatewayError
from ._routing import RouteRequest
from ._settings import GatewaySettings

__all__ = ["estimate_prompt_tokens", "plan_request"]

HINT_FIELD = "tallystick"
_HEADERS = {
    "provider": "x-tally-provider",
    "max_input_price": "x-tally-max-input-price",
    "max_output_price": "x-tally-max-output-price",
}
BYTES_PER_TOKEN = 3  # a conservative estimate (English averages ~4 for BPE vocabularies)
TOKENS_PER_MESSAGE = 8  # the chat template's role markers


def plan_request(
    kind: str, raw: bytes, headers: Mapping[str, str], settings: GatewaySettings
) -> tuple[dict[str, Any], RouteRequest]:
    """The body to forward and its route; ``GatewayError`` 400 for anything malformed."""
    if len(raw) > settings.max_body_bytes:
        raise GatewayError(413, f"the request is larger than {settings.max_body_bytes} bytes",
                           "request_too_large")  # fmt: skip
    try:
        body = loads_untrusted(raw, what="the request body")
    except TallystickError as exc:
        raise GatewayError(
            400, f"the request body is not valid JSON: {exc}", "invalid_json"
        ) from exc
    if not isinstance(body, dict):
        raise GatewayError(400, "the request body must be a JSON object", "invalid_request")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise GatewayError(400, "model is required (a string)", "invalid_request", "model")
    _check_shape(kind, body)
    hints = _hints(body.pop(HINT_FIELD, None), headers)
    max_tokens = _max_tokens(body, settings)
    route = RouteRequest(
        model=model,
        prompt_tokens=estimate_prompt_tokens(kind, body),
        max_tokens=max_tokens,
        token=settings.token,
        pin=hints.get("provider"),
        max_input_price=hints.get("max_input_price"),
        max_output_price=hints.get("max_output_price"),
    )
    return body, route


def _check_shape(kind: str, body: dict[str, Any]) -> None:
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise GatewayError(400, "messages must be a non-empty list", "invalid_request",
                               "messages")  # fmt: skip
    elif not isinstance(body.get("prompt"), str):
        raise GatewayError(400, "prompt must be a single string", "invalid_request", "prompt")
    if body.get("n", 1) != 1:
        raise GatewayError(400, "n must be 1: every choice is a bill to verify", "invalid_request",
                           "n")  # fmt: skip
    if "stream" in body and not isinstance(body["stream"], bool):
        raise GatewayError(400, "stream must be true or false", "invalid_request", "stream")


def _max_tokens(body: dict[str, Any], settings: GatewaySettings) -> int:
    field = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    value = body.get(field)
    if value is None:
        # Every request carries max_tokens: it bounds what the caller can be billed.
        body["max_tokens"] = settings.default_max_tokens
        return settings.default_max_tokens
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise GatewayError(400, f"{field} must be a positive integer", "invalid_request", field)
    return value


def _hints(field: Any, headers: Mapping[str, str]) -> dict[str, Any]:
    if field is not None and not isinstance(field, dict):
        raise GatewayError(400, f"{HINT_FIELD} must be an object", "invalid_request", HINT_FIELD)
    hints: dict[str, Any] = {}
    for name, header in _HEADERS.items():
        value = headers.get(header)
        if value is None and field is not None:
            value = field.get(name)
        if value is None:
            continue
        if name == "provider":
            text = str(value)
            if not (text.startswith("0x") and len(text) == 42):
                raise GatewayError(400, f"the pinned provider {text!r} is not an address",
                                   "invalid_request", name)  # fmt: skip
            hints[name] = text
        else:
            try:
                price = int(value)
            except (TypeError, ValueError):
                price = -1
            if price < 0 or isinstance(value, bool | float):
                raise GatewayError(400, f"{name} must be a non-negative integer (base units per "
                                   "million tokens)", "invalid_request", name)  # fmt: skip
            hints[name] = price
    return hints


def estimate_prompt_tokens(kind: str, body: dict[str, Any]) -> int:
    """A cheap upper-leaning estimate; the node's signed count is what is billed."""
    if kind == "text":
        return len(str(body.get("prompt", "")).encode()) // BYTES_PER_TOKEN + 4
    total = 0
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):  # content parts
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        total += len(str(content or "").encode()) // BYTES_PER_TOKEN + TOKENS_PER_MESSAGE
    return total + TOKENS_PER_MESSAGE
