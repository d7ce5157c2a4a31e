"""The exception tree of ``tallystick.client``.

    TallystickError                  (tallystick.protocol)
    └── ClientError                  anything the SDK or the CLI refuses or fails to do
        ├── WalletError              a key or keystore that cannot be loaded (never shows the key)
        ├── StoreError               the local store refuses a write (e.g. lower totals)
        ├── ProviderNotFound         no provider lists the model (or not at that price)
        ├── ListingMismatch          a node's /v1/models disagrees with its on-chain listing
        ├── OfferChanged             the listing changed before `open` ran: nothing was deposited
        │   ├── PriceChanged         the price rose above the accepted offer
        │   └── TokenChanged         the listing's payment token changed
        ├── ChannelNotFound          no such channel in the local store (or not open)
        ├── ChannelStateError        the channel is not in a state that allows the operation
        │   └── ChannelDisputed      a bill on it was refused: no more requests, close unilaterally
        ├── InsufficientDeposit      the deposit left cannot pay one more completion token
        ├── BillingDispute           a bill failed verification: nothing was countersigned
        ├── NodeUnavailable          the node cannot be reached, timed out, or broke off an answer
        └── NodeError                the node answered with an OpenAI error envelope
            ├── PaymentRequired      402: the channel must be countersigned or topped up
            └── InvalidResponse      an answer the protocol does not allow: not JSON, nested
                                     too deeply, too large (also a ``ProtocolError``)

Protocol and chain errors (``ProtocolError``, ``ChainError``, ``ContractError``,
``ChainUnavailable``) come from ``tallystick.protocol`` and share the ``TallystickError`` root,
so ``except TallystickError`` catches everything the SDK raises. Foreign errors (httpx,
sqlite3, eth-account) are translated at the boundary with ``raise X(...) from exc``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
from tallystick.protocol import Prices, ProtocolError, TallystickError

__all__ = [
    "BillingDispute",
    "ChannelDisputed",
    "ChannelNotFound",
    "ChannelStateError",
    "ClientError",
    "InsufficientDeposit",
    "InvalidResponse",
    "ListingMismatch",
    "Mismatch",
    "NodeError",
    "NodeUnavailable",
    "OfferChanged",
    "PaymentRequired",
    "PriceChanged",
    "ProviderNotFound",
    "StoreError",
    "TokenChanged",
    "WalletError",
]


class ClientError(TallystickError):
    """Base class of the SDK's own errors."""


class WalletError(ClientError):
    """A private key or keystore cannot be loaded; the message never contains key material."""


class StoreError(ClientError):
    """The local store refuses a write or cannot be opened."""


class ProviderNotFound(ClientError):
    """No registered provider offers the requested model (within the price limits)."""


class ListingMismatch(ClientError):
    """A node advertises a model differently from its on-chain listing."""


class OfferChanged(ClientError):
    """The provider changed the listing between discovery and ``open``.

    The escrow refused the open (``EscrowPriceAboveLimit``, ``EscrowTokenMismatch``), so
    nothing was escrowed; discovering again offers the listing as it is now.
    """

    def __init__(self, provider: str, model: str, change: str, what: str) -> None:
        self.provider = provider
        self.model = model
        super().__init__(
            f"provider {provider} {change}; the escrow refused the open and nothing was "
            f"deposited (open again to accept the new {what})"
        )


class PriceChanged(OfferChanged):
    """The provider's price rose above the accepted offer before ``open`` was mined.

    ``accepted`` are the prices the client discovered and used as its limits, ``current`` the
    listing's prices when the transaction ran.
    """

    def __init__(self, provider: str, model: str, accepted: Prices, current: Prices) -> None:
        self.accepted = accepted
        self.current = current
        change = f"raised its price for {model!r} before the channel opened: accepted "
        super().__init__(
            provider, model, f"{change}{_per_m(accepted)}, now {_per_m(current)}", "price"
        )


class TokenChanged(OfferChanged):
    """The provider re-listed the model in another payment token before ``open`` was mined.

    The client pays only in the token it accepted (``accepted``); ``listed`` is the listing's
    token now.
    """

    def __init__(self, provider: str, model: str, accepted: str, listed: str) -> None:
        self.accepted = accepted
        self.listed = listed
        change = (
            f"re-listed {model!r} in token {listed} before the channel opened (accepted {accepted})"
        )
        super().__init__(provider, model, change, "token")


def _per_m(prices: Prices) -> str:
    return f"input {prices.input_per_m} / output {prices.output_per_m} per million tokens"


class ChannelNotFound(ClientError):
    """The channel is unknown to this client's store."""


class ChannelStateError(ClientError):
    """The channel's on-chain status does not allow the requested operation."""


class ChannelDisputed(ChannelStateError):
    """The client refused a bill on this channel; the SDK sends it no more requests.

    The node holds a record the client never countersigned, so it would answer every request
    with ``402 receipt_required`` and refuse a cooperative close. The way out is a unilateral
    close; the message says how and when (``way_out``).
    """

    def __init__(self, channel_id: bytes, dispute_ids: list[int], way_out: str) -> None:
        self.channel_id = channel_id
        self.dispute_ids = list(dispute_ids)
        self.way_out = way_out
        ids = ", ".join(str(i) for i in dispute_ids)
        super().__init__(
            f"channel 0x{channel_id.hex()} is disputed (dispute {ids}; `tallystick disputes` shows "
            f"the evidence): no more requests are sent on it. {way_out}"
        )


class InsufficientDeposit(ClientError):
    """What is left of the deposit cannot pay even one completion token after the prompt."""


@dataclass(frozen=True)
class Mismatch:
    """One field of a bill that did not verify: what the client expected and what it got."""

    field: str
    expected: Any
    got: Any

    def to_json(self) -> dict[str, Any]:
        return {
            "field": self.field,
            "expected": _jsonable(self.expected),
            "got": _jsonable(self.got),
        }


class BillingDispute(ClientError):
    """A provider's bill failed verification; the client refused to countersign it.

    ``mismatches`` lists every field that did not verify; ``evidence`` is the full record
    kept on disk (the request, the response, the signed record); ``dispute_id`` its row in
    the store once saved.
    """

    def __init__(
        self,
        channel_id: bytes,
        seq: int | None,
        mismatches: list[Mismatch],
        evidence: dict[str, Any] | None = None,
    ) -> None:
        self.channel_id = channel_id
        self.seq = seq
        self.mismatches = list(mismatches)
        self.evidence = evidence or {}
        self.dispute_id: int | None = None
        self.way_out = ""
        super().__init__(self._message())

    def leave_by(self, way_out: str) -> None:
        """Add to the message how to leave the channel (unilateral close and its deadline)."""
        self.way_out = way_out
        self.args = (f"{self._message()}. Nothing was countersigned. {way_out}",)

    def _message(self) -> str:
        parts = "; ".join(
            f"{m.field}: expected {m.expected!r}, got {m.got!r}" for m in self.mismatches
        )
        return f"billing dispute on channel 0x{self.channel_id.hex()} seq {self.seq}: {parts}"


class NodeUnavailable(ClientError):
    """The node could not be reached, timed out, or the connection broke mid-answer.

    A request whose answer was cut off stays pending in the store and is resolved (or dropped
    as unbilled, when the node has no record of it) before the channel's next request.
    """


class NodeError(ClientError):
    """The node answered with an error: its HTTP status and OpenAI error envelope."""

    def __init__(self, status: int, message: str, code: str | None = None, type: str | None = None):
        self.status = status
        self.code = code
        self.type = type
        self.message = message
        super().__init__(f"node error {status}" + (f" ({code})" if code else "") + f": {message}")


class PaymentRequired(NodeError):
    """402: the node wants the last receipt countersigned (``receipt_required``) or more deposit."""


class InvalidResponse(NodeError, ProtocolError):
    """The node's answer is not one the protocol allows: malformed, nested too deeply, too large.

    Raised before the answer is parsed any further, so nothing in it is countersigned. Also a
    ``ProtocolError``: a node that breaks the wire format breaks the protocol.
    """

    def __init__(self, message: str, status: int = 200) -> None:
        super().__init__(status, message, "invalid_response")


def from_httpx(exc: httpx.HTTPError, url: object) -> ClientError:
    """An httpx failure as the SDK reports it: nothing from httpx crosses the SDK's boundary."""
    if isinstance(exc, httpx.TimeoutException):
        return NodeUnavailable(f"the node at {url} timed out: {exc!r}")
    if isinstance(exc, httpx.DecodingError):
        return InvalidResponse(f"the node at {url} sent a body that cannot be decoded: {exc}")
    if isinstance(exc, httpx.TransportError):
        return NodeUnavailable(f"the connection to the node at {url} failed: {exc!r}")
    return ClientError(f"HTTP error with the node at {url}: {exc!r}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
