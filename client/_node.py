"""HTTP calls to a provider's node other than completions (docs/protocol.md §8), and error mapping.

httpx errors become ``NodeUnavailable``; error responses become ``NodeError`` (402 →
``PaymentRequired``) carrying the node's OpenAI error envelope. Bodies are read up to a size
limit and depth-checked before they are parsed (``_json.py``): ``InvalidResponse`` otherwise.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
from tallystick.protocol import ClosingReceipt, ProtocolError, SignedReceipt, is_loopback

from ._errors import InvalidResponse, NodeError, PaymentRequired, from_httpx
from ._json import (
    MAX_BODY_BYTES,
    MAX_ERROR_BYTES,
    MAX_JSON_DEPTH,
    MAX_TOKENIZER_BYTES,
    loads,
    read_capped,
    too_deep,
)

__all__ = ["InsecureEndpointWarning", "NodeClient", "node_error", "send", "warn_if_insecure"]

Authorizer = Callable[[str, str, bytes], str]  # (method, path, body) -> Authorization value


class InsecureEndpointWarning(UserWarning):
    """A node endpoint is plain ``http://`` to another host: requests travel readable."""


def warn_if_insecure(endpoint: str) -> None:
    """Warn (once per endpoint) when ``endpoint`` is ``http://`` to a non-loopback host."""
    parts = urlsplit(endpoint)
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        warnings.warn(
            f"the node endpoint {endpoint} is plain HTTP to another host: prompts, answers and "
            "receipts travel readable (request signatures still protect the channel); "
            "use https://",
            InsecureEndpointWarning,
            stacklevel=3,
        )


class NodeClient:
    """One provider node, at ``endpoint`` (its base URL, without ``/v1``)."""

    def __init__(self, endpoint: str, http: httpx.Client) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._http = http
        warn_if_insecure(self.endpoint)

    def url(self, path: str) -> str:
        return f"{self.endpoint}{path}"

    def models(self) -> list[dict[str, Any]]:
        """``GET /v1/models``: the ``data`` list."""
        body = loads(self.request("GET", "/v1/models"), "the model list")
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise ProtocolError(f"{self.url('/v1/models')} did not return a model list")
        return data

    def tokenizer_bytes(self, model: str) -> bytes:
        """``GET /v1/tally/tokenizer/{model}``: the raw bytes (hashed as received, §6.1)."""
        path = f"/v1/tally/tokenizer/{model}"
        return self.request("GET", path, limit=MAX_TOKENIZER_BYTES)

    def post_receipt(self, receipt: SignedReceipt) -> None:
        """``POST /v1/tally/receipts``; returns once the node has it on disk.

        No request signature: the receipt's own signature is the client's over this action.
        """
        self.request("POST", "/v1/tally/receipts", json=receipt.to_json())

    def close(self, receipt: SignedReceipt, auth: Authorizer) -> bytes:
        """Ask the node to countersign the final receipt; return the provider's signature."""
        path = f"/v1/tally/channels/0x{receipt.receipt.channel_id.hex()}/close"
        body = loads(self.request("POST", path, json=receipt.to_json(), auth=auth), "close")
        try:
            return ClosingReceipt.from_json(body).provider_signature
        except ProtocolError as exc:
            raise ProtocolError(
                f"{self.url(path)} did not return a closing receipt: {exc}"
            ) from exc

    def record(self, channel_id: bytes, seq: int, auth: Authorizer) -> dict[str, Any]:
        """``GET /v1/tally/channels/{id}/records/{seq}``: a signed record and its ids."""
        path = f"/v1/tally/channels/0x{channel_id.hex()}/records/{seq}"
        body = loads(self.request("GET", path, auth=auth), "the record")
        if not isinstance(body, dict):
            raise ProtocolError(f"{self.url(path)} did not return a record object")
        return body

    def channel(self, channel_id: bytes, auth: Authorizer) -> dict[str, Any]:
        """``GET /v1/tally/channels/{id}``: the node's view of the channel."""
        path = f"/v1/tally/channels/0x{channel_id.hex()}"
        body = loads(self.request("GET", path, auth=auth), "the channel")
        return body if isinstance(body, dict) else {}

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        auth: Authorizer | None = None,
        limit: int = MAX_BODY_BYTES,
    ) -> bytes:
        """The body of a successful answer (at most ``limit`` bytes); ``NodeError`` otherwise.

        ``auth`` signs the request (§4.3) over its method, ``path`` and the exact body bytes.
        """
        request = self._http.build_request(method, self.url(path), json=json)
        if auth is not None:
            request.headers["Authorization"] = auth(method, path, request.read())
        response = send(self._http, request, stream=True)
        if response.status_code >= 400:
            raise node_error(response)
        return read_capped(response, limit, f"the answer to {method} {path}")


def send(http: httpx.Client, request: httpx.Request, *, stream: bool = False) -> httpx.Response:
    """Send, translating transport failures into ``NodeUnavailable``."""
    try:
        return http.send(request, stream=stream)
    except httpx.HTTPError as exc:
        raise from_httpx(exc, request.url) from exc


def node_error(response: httpx.Response) -> NodeError:
    """The ``NodeError`` for an error response, reading (at most 1 MiB of) its body.

    ``InvalidResponse`` when the body is too large or nested too deeply to be parsed.
    """
    status = response.status_code
    what = f"the node's {status} answer"
    body = read_capped(response, MAX_ERROR_BYTES, what)
    if too_deep(body):
        raise InvalidResponse(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels", status)
    try:
        envelope = json.loads(body)
    except ValueError:
        envelope = None  # not JSON: a proxy's error page, say
    err = envelope.get("error") if isinstance(envelope, dict) else None
    message, code, kind = response.reason_phrase or "error", None, None
    if isinstance(err, dict):
        message = str(err.get("message") or message)
        code = err.get("code") if isinstance(err.get("code"), str) else None
        kind = err.get("type") if isinstance(err.get("type"), str) else None
    elif body:
        message = body[:300].decode("utf-8", "replace")
    cls = PaymentRequired if status == 402 else NodeError
    return cls(status, message, code, kind)
