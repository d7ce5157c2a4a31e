"""``TallyTransport``: an httpx transport that makes any OpenAI client pay only verified bills.

It sits under ``openai.OpenAI(http_client=httpx.Client(transport=...))`` (and under the SDK's
own chat API): it signs each request (§4.3), counts the prompt itself, piggybacks an
undelivered receipt, and verifies the bill of every completion before the caller sees the
answer (streaming: before ``[DONE]`` is passed on). A bill that does not verify raises
``BillingDispute`` out of the OpenAI call; nothing is countersigned.

Everything the node sends is bounded in size and depth-checked before anything parses it
(``_json.py``), including the answers passed straight through to the OpenAI client: a node
cannot crash the process with deeply nested JSON (``InvalidResponse`` instead).

A request is stored as pending before it is sent. When its answer ends without a record
(the caller closed the stream early, the connection dropped), what was received is stored
with it, and the next request on the channel first resolves it from the node's signed record.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

import httpx
from tallystick.protocol import RECEIPT_HEADER, ProtocolError

from ._billing import LOCK_TIMEOUT_S, Biller
from ._errors import ClientError, InvalidResponse, from_httpx
from ._json import MAX_BODY_BYTES, MAX_EVENT_BYTES, MAX_JSON_DEPTH, loads, read_capped, too_deep
from ._locks import ChannelLock
from ._types import OpenChannel
from ._verify import Served, VerifiedBill

__all__ = ["BILL_EXTENSION", "BillSlot", "TallyTransport"]

BILL_EXTENSION = "tallystick.bill"  # response.extensions key holding a BillSlot
# Headers that describe the bytes as the node sent them, not the decoded bytes passed on.
_WIRE_HEADERS = frozenset({"content-length", "content-encoding", "transfer-encoding"})


@dataclass
class BillSlot:
    """Filled with the verified bill once the response has been read (streams: at the end)."""

    bill: VerifiedBill | None = None
    bill_json: dict[str, Any] = field(default_factory=dict)  # the response's tallystick object
    payload: Any = None  # a plain completion's parsed JSON, so it is not parsed twice


class TallyTransport(httpx.BaseTransport):
    """Verifies and countersigns completions on one channel; passes other requests through."""

    def __init__(self, biller: Biller, channel: OpenChannel, inner: httpx.BaseTransport) -> None:
        self.biller = biller
        self.channel = channel
        self.inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        kind = _kind(request)
        if kind is None:
            self._sign(request)
            return _checked(self.inner.handle_request(request))
        body = _request_json(request)
        served = self._served(kind, body)
        lock = self.biller.channel_lock(self.channel.channel_id)
        if not lock.acquire(timeout=LOCK_TIMEOUT_S):
            raise ClientError(f"channel {self.channel.hex_id} stayed busy with another request")
        try:
            return self._send(request, kind, body, served, lock)
        except BaseException:
            lock.release()
            raise

    def close(self) -> None:
        pass  # the inner transport belongs to the Tallystick client, which closes it

    def _sign(self, request: httpx.Request) -> None:
        # Replaces whatever the caller put there (the openai SDK's api_key, which buys nothing).
        route = _route(request.url.path, self.channel.endpoint)
        request.headers["Authorization"] = self.biller.authorization(
            self.channel, request.method, route, request.read()
        )

    def _send(
        self,
        request: httpx.Request,
        kind: str,
        body: dict[str, Any],
        served: Served,
        lock: ChannelLock,
    ) -> httpx.Response:
        self.biller.check_usable(self.channel)
        self.biller.resolve_pending(self.channel)
        request, served = self._payable(request, body, served)
        pending = self.biller.pending_receipt(self.channel)
        if pending is not None:
            request.headers[RECEIPT_HEADER] = pending
        self._sign(request)  # for the next seq, after the last receipt (both resolved above)
        seq = self.biller.begin(self.channel, served)
        try:
            response = self.inner.handle_request(request)
        except httpx.HTTPError as exc:
            if isinstance(exc, httpx.ConnectError):
                self.biller.store.clear_pending(self.channel.channel_id, seq)  # never sent
            # Otherwise it stays pending (nothing received): resolved before the next request.
            raise from_httpx(exc, request.url) from exc
        if pending is not None and response.status_code < 400:
            # The node only serves after it has the piggybacked receipt on disk.
            self.biller.store.mark_delivered(self.channel.channel_id, _seq_of(self.biller, self))
        if response.status_code >= 400:
            self.biller.store.clear_pending(self.channel.channel_id, seq)  # refused: no record
            checked = _checked(response)  # on failure, handle_request releases the lock
            lock.release()
            return checked
        slot = BillSlot()
        stream = _VerifyingStream(self, kind, body, served, response, slot, lock, seq)
        return httpx.Response(
            response.status_code,
            headers=_decoded_headers(response),
            stream=stream,
            extensions={**response.extensions, BILL_EXTENSION: slot},
        )

    def _payable(
        self, request: httpx.Request, body: dict[str, Any], served: Served
    ) -> tuple[httpx.Request, Served]:
        """The request with a ``max_tokens`` the deposit can pay, always sent (§8.1)."""
        cap = self.biller.max_tokens(self.channel, served)
        keys = [k for k in ("max_completion_tokens", "max_tokens") if k in body] or ["max_tokens"]
        if all(body.get(k) == cap for k in keys) and served.seed is not None:
            return request, served
        for k in keys:
            body[k] = cap
        if served.seed is None:
            # Always a seed of the client's choosing (§10.2), also for a body that named none
            # (an OpenAI client through the gateway): the bill must state it.
            body["seed"] = secrets.randbits(63)
            served = replace(served, seed=body["seed"])
        headers = [
            (k, v) for k, v in request.headers.multi_items() if k.lower() != "content-length"
        ]
        rebuilt = httpx.Request(
            request.method,
            request.url,
            headers=headers,
            content=json.dumps(body).encode(),
            extensions=request.extensions,
        )
        return rebuilt, replace(served, max_tokens=cap)

    def _served(self, kind: str, body: dict[str, Any]) -> Served:
        model = body.get("model")
        if model != self.channel.model:
            raise ClientError(
                f"channel {self.channel.hex_id} is for {self.channel.model!r}, not {model!r}"
            )
        if body.get("n", 1) != 1:
            raise ClientError("Tallystick verifies one choice per request: n must be 1")
        counter = self.biller.prompt_counter(self.channel)
        if kind == "chat":
            prompt_ids = counter.chat_prompt_ids(body.get("messages") or [])
        else:
            prompt = body.get("prompt")
            if not isinstance(prompt, str):
                raise ClientError("Tallystick verifies a single string prompt per completion")
            prompt_ids = counter.counter.text_prompt_ids(prompt)
        stop = body.get("stop") or ()
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        return Served(
            prompt_ids,
            "",
            None,
            (stop,) if isinstance(stop, str) else tuple(stop),
            max_tokens if isinstance(max_tokens, int) else None,
            *_sampling(body),
        )

    def countersign(
        self,
        served: Served,
        text: str,
        finish: str | None,
        bill_json: Any,
        evidence: dict[str, Any],
    ) -> VerifiedBill:
        final = replace(served, text=text, finish_reason=finish)
        return self.biller.countersign(self.channel, final, bill_json, evidence)

    def interrupted(self, seq: int, served: Served, text: str) -> None:
        final = replace(served, text=text, finish_reason=None)
        self.biller.interrupted(self.channel, seq, final)


class _VerifyingStream(httpx.SyncByteStream):
    """Passes the node's bytes through, verifying the bill before the answer is complete."""

    def __init__(
        self,
        transport: TallyTransport,
        kind: str,
        body: dict[str, Any],
        served: Served,
        response: httpx.Response,
        slot: BillSlot,
        lock: ChannelLock,
        seq: int,
    ) -> None:
        self.transport = transport
        self.kind = kind
        self.body = body
        self.served = served
        self.response = response
        self.slot = slot
        self.lock: ChannelLock | None = lock
        self.seq = seq
        self.text: list[str] = []  # received so far
        self.billed = False  # the bill is dealt with: verified, disputed, or left to resolve

    def __iter__(self) -> Iterator[bytes]:
        try:
            if self.body.get("stream"):
                yield from self._sse()
            else:
                yield self._plain()
        except httpx.HTTPError as exc:  # the node died or the connection broke mid-answer
            raise from_httpx(exc, self.transport.channel.endpoint) from exc
        finally:
            self._release()

    def close(self) -> None:
        try:
            self.response.close()
        finally:
            self._release()

    def _release(self) -> None:
        if self.lock is None:
            return
        try:
            if not self.billed:
                # Ended without a record: keep what was received for the next request.
                self.transport.interrupted(self.seq, self.served, "".join(self.text))
        finally:
            self.lock.release()
            self.lock = None

    def _plain(self) -> bytes:
        content = read_capped(self.response, MAX_BODY_BYTES, "the completion")
        try:
            payload = loads(content, "the completion")
            choice = payload["choices"][0]
        except (ProtocolError, KeyError, IndexError, TypeError) as exc:
            # The whole body arrived and holds no answer: a withheld answer is paid for only
            # as far as it arrived (not one completion id), resolved before the next request.
            self._ended_by_node("", now=False)
            if isinstance(exc, ProtocolError):
                raise
            raise ProtocolError(f"the node's completion is not OpenAI JSON: {exc}") from exc
        self.slot.payload = payload
        text = _choice_text(self.kind, choice, delta=False)
        if "tallystick" not in payload:
            self._ended_by_node(text)
            return content
        evidence = {"request": self.body, "response": payload}
        self._countersign(text, choice.get("finish_reason"), payload.get("tallystick"), evidence)
        return content

    def _sse(self) -> Iterator[bytes]:
        text = self.text
        finish: str | None = None
        for event in _sse_events(self.response.iter_bytes()):
            data = _sse_data(event)
            chunk = _loads(data) if data is not None and data != "[DONE]" else {}
            for choice in chunk.get("choices") or []:
                text.append(_choice_text(self.kind, choice, delta=True))
                finish = choice.get("finish_reason") or finish
            # Verify on the chunk carrying the record (or at [DONE] without one, a dispute),
            # before passing it on: the caller never holds an unverified final answer.
            if not self.billed and ("tallystick" in chunk or data == "[DONE]"):
                evidence = self._evidence(text, finish)
                self._countersign("".join(text), finish, chunk.get("tallystick"), evidence)
            yield event
        if not self.billed:
            # The node closed the stream itself, without its record: pay only what arrived.
            self._ended_by_node("".join(text))
        # A stream cut off (the caller stopped reading, the connection dropped) before its
        # record is resolved on the next request (_release).

    def _ended_by_node(self, text: str, *, now: bool = True) -> None:
        self.billed = True  # resolved (now or before the next request), or disputed
        final = replace(self.served, text=text, finish_reason=None)
        self.slot.bill = self.transport.biller.ended_by_node(
            self.transport.channel, self.seq, final, now=now
        )

    def _evidence(self, text: list[str], finish: str | None) -> dict[str, Any]:
        return {"request": self.body, "response": {"text": "".join(text), "finish_reason": finish}}

    def _countersign(
        self, text: str, finish: str | None, bill_json: Any, evidence: dict[str, Any]
    ) -> None:
        self.slot.bill_json = bill_json if isinstance(bill_json, dict) else {}
        self.billed = True  # verified, or disputed with its evidence stored
        transport = self.transport
        self.slot.bill = transport.countersign(self.served, text, finish, bill_json, evidence)
        transport.biller.audit_later(transport.channel, self.body, self.served, self.slot.bill_json)


def _sampling(body: dict[str, Any]) -> tuple[int | None, float, float]:
    """The seed, temperature and top_p a request asks for (OpenAI's defaults when absent)."""
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ClientError(f"seed must be an integer, got {seed!r}")
    values = []
    for key in ("temperature", "top_p"):
        value = body.get(key)
        if value is None:
            value = 1.0
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ClientError(f"{key} must be a number, got {value!r}")
        values.append(float(value))
    return seed, values[0], values[1]


def _kind(request: httpx.Request) -> str | None:
    if request.method != "POST":
        return None
    path = request.url.path.rstrip("/")
    if path.endswith("/v1/chat/completions"):
        return "chat"
    if path.endswith("/v1/completions"):
        return "text"
    return None


def _route(path: str, endpoint: str) -> str:
    """``path`` relative to the node's base URL (what the node routes, from ``/v1/`` on)."""
    prefix = urlsplit(endpoint).path.rstrip("/")
    return path[len(prefix) :] if prefix and path.startswith(prefix + "/") else path


def _request_json(request: httpx.Request) -> dict[str, Any]:
    raw = request.read()
    if too_deep(raw):  # the caller's own JSON, but the same C stack
        raise ClientError(f"the completion request is nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise ClientError(f"the completion request is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ClientError("the completion request must be a JSON object")
    return body


def _choice_text(kind: str, choice: dict[str, Any], *, delta: bool) -> str:
    if kind == "text":
        return str(choice.get("text") or "")
    part = choice.get("delta" if delta else "message") or {}
    return str(part.get("content") or "")


def _sse_events(chunks: Iterator[bytes], limit: int = MAX_EVENT_BYTES) -> Iterator[bytes]:
    """Split a byte stream into complete SSE events (each ending in a blank line).

    Line ends are normalised to ``\\n`` in what is passed on (SSE also allows ``\\r`` and
    ``\\r\\n``), so the events the caller's SSE parser sees are exactly the ones checked here.
    An event longer than ``limit`` raises ``InvalidResponse``.
    """
    buffer = bytearray()
    carry_cr = False  # a chunk ending in \r may be the first half of a \r\n
    for chunk in chunks:
        text, carry_cr = _normalise_newlines(chunk, carry_cr)
        start = max(len(buffer) - 1, 0)  # a separator may straddle the chunks
        buffer += text
        while (end := buffer.find(b"\n\n", start)) != -1:
            yield bytes(buffer[: end + 2])
            del buffer[: end + 2]
            start = 0
        if len(buffer) > limit:
            raise InvalidResponse(f"a stream event is larger than {limit >> 20} MiB")
    if carry_cr:
        buffer += b"\n"
    if buffer.strip():
        yield bytes(buffer)


def _normalise_newlines(chunk: bytes, carry_cr: bool) -> tuple[bytes, bool]:
    if carry_cr:
        chunk = b"\r" + chunk
    carry = chunk.endswith(b"\r")
    if carry:
        chunk = chunk[:-1]
    return chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n"), carry


def _sse_data(event: bytes) -> str | None:
    try:
        text = event.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidResponse(f"a stream event is not UTF-8: {exc}") from exc
    lines = [ln[5:].lstrip() for ln in text.split("\n") if ln.startswith("data:")]
    return "\n".join(lines) if lines else None


def _loads(data: str) -> dict[str, Any]:
    obj = loads(data, "a stream chunk")
    return obj if isinstance(obj, dict) else {}


def _checked(response: httpx.Response) -> httpx.Response:
    """``response`` read (bounded) and depth-checked, for the caller's client to parse."""
    body = read_capped(response, MAX_BODY_BYTES, f"the node's {response.status_code} answer")
    if too_deep(body):
        raise InvalidResponse(
            f"the node's {response.status_code} answer is nested deeper than {MAX_JSON_DEPTH} "
            "levels",
            response.status_code,
        )
    return httpx.Response(
        response.status_code,
        headers=_decoded_headers(response),
        content=body,
        extensions=response.extensions,
    )


def _decoded_headers(response: httpx.Response) -> list[tuple[str, str]]:
    return [(k, v) for k, v in response.headers.multi_items() if k.lower() not in _WIRE_HEADERS]


def _seq_of(biller: Biller, transport: TallyTransport) -> int:
    return biller.store.tally(transport.channel.channel_id).seq
