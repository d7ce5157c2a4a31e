"""HTTP calls to a provider's node other than completions (docs/protocol.md §8), and error mapping.

httpx errors become ``NodeUnavailable``; error responses become ``NodeError`` (402 →
``PaymentRequired``) carrying the node's OpenAI error envelope.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from tallystick.protocol import ProtocolError, SignedReceipt

from ._errors import NodeError, NodeUnavailable, PaymentRequired

__all__ = ["NodeClient", "node_error", "send"]


class NodeClient:
    """One provider node, at ``endpoint`` (its base URL, without ``/v1``)."""

    def __init__(self, endpoint: str, http: httpx.Client) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._http = http

    def url(self, path: str) -> str:
        return f"{self.endpoint}{path}"

    def models(self) -> list[dict[str, Any]]:
        """``GET /v1/models``: the ``data`` list."""
        body = _json(self.request("GET", "/v1/models"))
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise ProtocolError(f"{self.url('/v1/models')} did not return a model list")
        return data

    def tokenizer_bytes(self, model: str) -> bytes:
        """``GET /v1/tally/tokenizer/{model}``: the raw bytes (hashed as received, §6.1)."""
        return self.request("GET", f"/v1/tally/tokenizer/{model}").content

    def post_receipt(self, receipt: SignedReceipt, bearer: str) -> None:
        """``POST /v1/tally/receipts``; returns once the node has it on disk."""
        self.request("POST", "/v1/tally/receipts", json=receipt.to_json(), bearer=bearer)

    def close(self, receipt: SignedReceipt, bearer: str) -> bytes:
        """Ask the node to countersign the final receipt; return the provider's signature."""
        path = f"/v1/tally/channels/0x{receipt.receipt.channel_id.hex()}/close"
        body = _json(self.request("POST", path, json=receipt.to_json(), bearer=bearer))
        sig = None
        if isinstance(body, dict):
            sig = body.get("providerSignature") or body.get("provider_signature")
            sig = sig or body.get("signature")
        if not isinstance(sig, str) or not sig.startswith("0x") or len(sig) != 132:
            raise ProtocolError(f"{self.url(path)} did not return a 65-byte provider signature")
        return bytes.fromhex(sig[2:])

    def record(self, channel_id: bytes, seq: int, bearer: str) -> dict[str, Any]:
        """``GET /v1/tally/channels/{id}/records/{seq}``: a signed record and its ids."""
        path = f"/v1/tally/channels/0x{channel_id.hex()}/records/{seq}"
        body = _json(self.request("GET", path, bearer=bearer))
        if not isinstance(body, dict):
            raise ProtocolError(f"{self.url(path)} did not return a record object")
        return body

    def channel(self, channel_id: bytes, bearer: str) -> dict[str, Any]:
        """``GET /v1/tally/channels/{id}``: the node's view of the channel."""
        body = _json(self.request("GET", f"/v1/tally/channels/0x{channel_id.hex()}", bearer=bearer))
        return body if isinstance(body, dict) else {}

    def request(
        self, method: str, path: str, *, json: Any = None, bearer: str | None = None
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        request = self._http.build_request(method, self.url(path), json=json, headers=headers)
        response = send(self._http, request)
        response.read()
        if response.status_code >= 400:
            raise node_error(response)
        return response


def send(http: httpx.Client, request: httpx.Request, *, stream: bool = False) -> httpx.Response:
    """Send, translating transport failures into ``NodeUnavailable``."""
    try:
        return http.send(request, stream=stream)
    except httpx.TimeoutException as exc:
        raise NodeUnavailable(f"node at {request.url.host} timed out: {exc}") from exc
    except httpx.TransportError as exc:
        raise NodeUnavailable(f"cannot reach the node at {request.url}: {exc}") from exc


def node_error(response: httpx.Response) -> NodeError:
    """The ``NodeError`` for an error response (its body must already be read)."""
    message, code, kind = response.reason_phrase or "error", None, None
    try:
        err = response.json().get("error")
    except (ValueError, AttributeError):
        err = None
    if isinstance(err, dict):
        message = str(err.get("message") or message)
        code = err.get("code") if isinstance(err.get("code"), str) else None
        kind = err.get("type") if isinstance(err.get("type"), str) else None
    elif response.text:
        message = response.text[:300]
    cls = PaymentRequired if response.status_code == 402 else NodeError
    return cls(response.status_code, message, code, kind)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"{response.request.url} returned non-JSON: {exc}") from exc
