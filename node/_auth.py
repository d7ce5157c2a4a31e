"""Request signatures (docs/protocol.md §4.3, §8): parse, check expiry, body and one use.

The gate adds what needs the channel (who may sign) and, for a spending request, the seq and
the last countersigned root (under the channel's lock, before the credit rule).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from tallystick.protocol import (
    ChannelState,
    Domain,
    InvalidRequestAuth,
    InvalidSignature,
    RequestAuth,
    SignedRequestAuth,
    recover_request_auth_signer,
    request_hash,
)

from ._errors import ApiError

__all__ = ["MAX_REQUEST_TTL_S", "Authorized", "SeenRequests", "parse_request_auth", "signer_of"]

# A node refuses a signature valid longer than this: a longer one would have to be remembered
# longer to stay one-use. Generous for clock skew; the SDK signs for 60 s.
MAX_REQUEST_TTL_S = 600


@dataclass(frozen=True)
class Authorized:
    """A request whose signature recovers to the channel's client or session key."""

    channel: ChannelState
    auth: RequestAuth
    signer: str


class SeenRequests:
    """Struct hashes of accepted request signatures, kept until they expire (one use each)."""

    def __init__(self) -> None:
        self._until: dict[bytes, int] = {}
        self._next_sweep = 0.0

    def use(self, key: bytes, expires_at: int, now: float) -> None:
        """Record ``key``; 401 ``replayed_request`` if it was used before. No awaits: atomic."""
        if now >= self._next_sweep:
            self._until = {k: t for k, t in self._until.items() if t > now}
            self._next_sweep = now + 30.0
        if key in self._until:
            raise ApiError(
                401,
                "this request signature was already used; sign each request afresh",
                code="replayed_request",
            )
        self._until[key] = expires_at

    def __len__(self) -> int:
        return len(self._until)


def parse_request_auth(
    authorization: str | None, method: str, path: str, body: bytes
) -> SignedRequestAuth:
    """The request's signature, checked for form, expiry and the request it is bound to."""
    if not authorization:
        raise ApiError(
            401,
            "missing request signature: send Authorization: Tally tsr1.<channelId>.<seq>."
            "<lastRoot>.<requestHash>.<expiresAt>.<nonce>.<signature> (docs/protocol.md §4.3); "
            "the Tallystick SDK and gateway sign every request",
            code="missing_api_key",
        )
    try:
        signed = SignedRequestAuth.from_header(authorization)
    except InvalidRequestAuth as exc:
        raise ApiError(401, str(exc), code="invalid_api_key") from exc
    now = time.time()
    auth = signed.auth
    if auth.expired(now):
        raise ApiError(401, "the request signature has expired", code="expired_request")
    if auth.expires_at > now + MAX_REQUEST_TTL_S:
        raise ApiError(
            401,
            f"the request signature is valid for more than {MAX_REQUEST_TTL_S} s; sign it "
            "for less (or fix the client's clock)",
            code="expired_request",
        )
    if auth.request_hash != request_hash(method, path, body):
        raise ApiError(
            401,
            f"the request signature is for another request than {method} {path} with this body",
            code="request_mismatch",
        )
    return signed


def signer_of(domain: Domain, signed: SignedRequestAuth) -> str:
    """Who signed the request; 401 for a signature that does not recover."""
    try:
        return recover_request_auth_signer(domain, signed)
    except InvalidSignature as exc:
        raise ApiError(401, f"bad request signature: {exc}", code="invalid_api_key") from exc
