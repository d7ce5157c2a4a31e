"""The RequestAuth of §4.3: a client signature bound to one HTTP request on one channel.

Wire form (``Authorization: Tally <value>``)::

    tsr1.<channelId>.<seq>.<lastRoot>.<requestHash>.<expiresAt>.<nonce>.<signature>

hex without ``0x`` for the 32-byte fields and the 65-byte signature, decimal integers for the
rest. ``requestHash`` commits to the method, the route and the exact body bytes, so a captured
value cannot carry another body; ``seq`` and ``lastRoot`` bind a spending request to the
channel's next request, and the node takes each value at most once.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, field

from eth_abi import encode as abi_encode
from eth_utils import keccak

from ._errors import InvalidRequestAuth
from ._types import UINT64_MAX, check_bytes32, check_signature, check_uint

REQUEST_AUTH_TYPE = (
    "RequestAuth(bytes32 channelId,uint64 seq,bytes32 lastRoot,bytes32 requestHash,"
    "uint64 expiresAt,uint64 nonce)"
)
REQUEST_AUTH_TYPEHASH = keccak(text=REQUEST_AUTH_TYPE)
SCHEME = "Tally"
PREFIX = "tsr1"
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_HEX130 = re.compile(r"[0-9a-fA-F]{130}")
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,19}")


def request_hash(method: str, path: str, body: bytes) -> bytes:
    """``keccak256(abi.encode(keccak256(method), keccak256(path), keccak256(body)))`` (§4.3).

    ``method`` is upper-cased; ``path`` is the route from ``/v1/`` on, without the query.
    """
    parts = (keccak(text=method.upper()), keccak(text=path), keccak(bytes(body)))
    return keccak(abi_encode(["bytes32", "bytes32", "bytes32"], parts))


@dataclass(frozen=True)
class RequestAuth:
    """What the client signs for one request (§4.3)."""

    channel_id: bytes
    seq: int
    last_root: bytes
    request_hash: bytes
    expires_at: int
    nonce: int

    def __post_init__(self) -> None:
        for name in ("channel_id", "last_root", "request_hash"):
            object.__setattr__(self, name, check_bytes32(name, getattr(self, name)))
        for name in ("seq", "expires_at", "nonce"):
            check_uint(name, getattr(self, name), UINT64_MAX)

    def struct_hash(self) -> bytes:
        """EIP-712 ``hashStruct(RequestAuth)``; every field is one 32-byte word."""
        return keccak(
            REQUEST_AUTH_TYPEHASH
            + self.channel_id
            + self.seq.to_bytes(32, "big")
            + self.last_root
            + self.request_hash
            + self.expires_at.to_bytes(32, "big")
            + self.nonce.to_bytes(32, "big")
        )

    def expired(self, now: float | None = None) -> bool:
        """True once ``expires_at`` (unix seconds) is not in the future."""
        return self.expires_at <= (time.time() if now is None else now)

    @classmethod
    def for_request(
        cls,
        channel_id: bytes,
        seq: int,
        last_root: bytes,
        method: str,
        path: str,
        body: bytes,
        ttl_s: int,
    ) -> RequestAuth:
        """The RequestAuth of one request, valid ``ttl_s`` seconds, with a random nonce."""
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        return cls(
            channel_id,
            seq,
            last_root,
            request_hash(method, path, body),
            int(time.time()) + int(ttl_s),
            secrets.randbits(64),
        )


@dataclass(frozen=True)
class SignedRequestAuth:
    """A RequestAuth with the client's (or session key's) 65-byte signature."""

    auth: RequestAuth
    signature: bytes = field(repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "signature", check_signature(self.signature))

    def encode(self) -> str:
        """The wire form (lowercase hex, no ``0x``), without the ``Tally`` scheme."""
        a = self.auth
        return ".".join(
            (
                PREFIX,
                a.channel_id.hex(),
                str(a.seq),
                a.last_root.hex(),
                a.request_hash.hex(),
                str(a.expires_at),
                str(a.nonce),
                self.signature.hex(),
            )
        )

    def header(self) -> str:
        """The ``Authorization`` header value: ``Tally tsr1.…``."""
        return f"{SCHEME} {self.encode()}"

    @classmethod
    def parse(cls, value: str) -> SignedRequestAuth:
        """Parse the wire form; ``InvalidRequestAuth`` with a readable reason otherwise."""
        if not isinstance(value, str):
            raise InvalidRequestAuth("the request signature must be a string")
        parts = value.strip().split(".")
        if len(parts) != 8 or parts[0] != PREFIX:
            raise InvalidRequestAuth(
                "a Tallystick request signature has the form tsr1.<channelId>.<seq>.<lastRoot>."
                "<requestHash>.<expiresAt>.<nonce>.<signature>"
            )
        _, channel, seq, root, rhash, expires, nonce, sig = parts
        for name, text in (("channelId", channel), ("lastRoot", root), ("requestHash", rhash)):
            if not _HEX64.fullmatch(text):
                raise InvalidRequestAuth(f"{name} must be 64 hex characters")
        for name, text in (("seq", seq), ("expiresAt", expires), ("nonce", nonce)):
            if not _DECIMAL.fullmatch(text) or int(text) > UINT64_MAX:
                raise InvalidRequestAuth(f"{name} must be a decimal uint64")
        if not _HEX130.fullmatch(sig):
            raise InvalidRequestAuth("the signature must be 130 hex characters (r || s || v)")
        auth = RequestAuth(
            bytes.fromhex(channel),
            int(seq),
            bytes.fromhex(root),
            bytes.fromhex(rhash),
            int(expires),
            int(nonce),
        )
        return cls(auth, bytes.fromhex(sig))

    @classmethod
    def from_header(cls, authorization: str) -> SignedRequestAuth:
        """Parse an ``Authorization: Tally tsr1.…`` header value."""
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() != SCHEME.lower() or not value.strip():
            raise InvalidRequestAuth(
                "the Authorization header must be 'Tally tsr1.…' (a request signature; a bearer "
                "token is not accepted)"
            )
        return cls.parse(value)
