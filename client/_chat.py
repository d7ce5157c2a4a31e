"""``client.chat.completions.create`` and ``client.completions.create``, shaped like ``openai``.

They return the official ``openai`` types with one extra attribute, ``tally``: the verified
bill (``VerifiedBill``: the provider-signed record, this request's cost, the channel's total).
Every request goes through ``TallyTransport``, so what these return has already been
verified and countersigned.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Generic, TypedDict, TypeVar, Unpack

import httpx
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import BaseModel
from tallystick.protocol import ProtocolError

from ._json import loads
from ._node import node_error, send
from ._transport import BILL_EXTENSION, BillSlot
from ._verify import VerifiedBill

if TYPE_CHECKING:
    from ._client import Tallystick

__all__ = ["Chat", "CompletionOptions", "Completions", "TallyStream"]

T = TypeVar("T", bound=BaseModel)


class TallyStream(Generic[T]):
    """An iterator of chunks; ``tally`` holds the verified bill once the stream has ended."""

    def __init__(self, response: httpx.Response, chunk_type: type[T], slot: BillSlot) -> None:
        self.response = response
        self._type = chunk_type
        self._slot = slot

    @property
    def tally(self) -> VerifiedBill | None:
        return self._slot.bill

    def __iter__(self) -> Iterator[T]:
        try:
            for line in self.response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                yield self._chunk(data)
        finally:
            self.response.close()

    def _chunk(self, data: str) -> T:
        try:
            chunk = self._type.model_validate(loads(data, "a stream chunk"))
        except ValueError as exc:
            raise ProtocolError(f"the node sent a malformed stream chunk: {exc}") from exc
        if isinstance(chunk.model_extra, dict) and "tallystick" in chunk.model_extra:
            # The final chunk carries the record; the bill is filled in when [DONE] arrives.
            _attach(chunk, self._slot)
        return chunk

    def close(self) -> None:
        self.response.close()

    def __enter__(self) -> TallyStream[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Endpoint:
    def __init__(self, client: Tallystick) -> None:
        self._client = client

    def _create(
        self,
        path: str,
        result: type[BaseModel],
        chunk: type[BaseModel],
        body: dict[str, Any],
        channel: bytes | str | None,
    ) -> Any:
        info = self._client.channel_for(str(body.get("model")), channel)
        http = self._client.http_client(info)
        request = http.build_request("POST", info.endpoint.rstrip("/") + path, json=body)
        response = send(http, request, stream=True)
        if response.status_code >= 400:
            raise node_error(response)
        slot = response.extensions[BILL_EXTENSION]
        if body.get("stream"):
            return TallyStream(response, chunk, slot)
        return _parse(response, result, slot)


class CompletionOptions(TypedDict, total=False):
    """The OpenAI fields both ``create`` methods take besides the prompt (``None``: not sent).

    These are the fields the node reads (docs/protocol.md §8); another keyword is sent as given
    and ignored by the node. ``max_completion_tokens`` is chat's name for ``max_tokens``.
    """

    max_tokens: int | None
    max_completion_tokens: int | None
    temperature: float | None
    top_p: float | None
    seed: int | None  # absent: a random one, which the record commits to (§10.2)
    stop: str | list[str] | None
    stream: bool
    stream_options: dict[str, Any] | None
    n: int  # the SDK verifies one choice: only 1
    user: str | None


class _ChatCompletions(_Endpoint):
    def create(
        self,
        *,
        model: str,
        messages: list[dict[str, Any]],
        channel: bytes | str | None = None,
        **options: Unpack[CompletionOptions],
    ) -> Any:
        """A verified ``ChatCompletion``, or a stream of ``ChatCompletionChunk``."""
        body = _body(model=model, messages=messages, **options)
        return self._create(
            "/v1/chat/completions", ChatCompletion, ChatCompletionChunk, body, channel
        )


class Chat:
    """``client.chat``: holds ``completions``."""

    def __init__(self, client: Tallystick) -> None:
        self.completions = _ChatCompletions(client)


class Completions(_Endpoint):
    """``client.completions``: verified text completions."""

    def create(
        self,
        *,
        model: str,
        prompt: str,
        channel: bytes | str | None = None,
        **options: Unpack[CompletionOptions],
    ) -> Any:
        """A verified text completion: ``Completion``, or a stream of ``Completion`` chunks."""
        body = _body(model=model, prompt=prompt, **options)
        return self._create("/v1/completions", Completion, Completion, body, channel)


def _body(**fields: Any) -> dict[str, Any]:
    body = {k: v for k, v in fields.items() if v is not None}
    if not body.get("stream"):
        body.pop("stream", None)  # stream=False: the OpenAI default, not sent
    # Always a seed of our own choosing: the record commits to it and an audit replays it
    # (docs/protocol.md §10.2). 63 bits: a non-negative int64.
    body.setdefault("seed", secrets.randbits(63))
    return body


def _parse(response: httpx.Response, result: type[BaseModel], slot: BillSlot) -> Any:
    try:
        response.read()  # verifies and countersigns (TallyTransport), or raises BillingDispute
    finally:
        response.close()
    # The transport parsed (and depth-checked) the body while verifying the bill.
    payload = slot.payload if slot.payload is not None else loads(response.content, "completion")
    try:
        obj = result.model_validate(payload)
    except ValueError as exc:
        raise ProtocolError(f"the node's completion is not OpenAI JSON: {exc}") from exc
    _attach(obj, slot)
    return obj


def _attach(obj: BaseModel, slot: BillSlot) -> None:
    # openai's models allow extra attributes; ``tally`` reads the slot so a stream's final
    # chunk shows the bill once it is verified.
    object.__setattr__(obj, "tally", slot.bill)
