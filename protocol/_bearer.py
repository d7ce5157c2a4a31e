"""The bearer token of §4.3: ``tsk1.<channelId hex>.<expiresAt>.<signature hex>``.

It names a channel and is signed by the channel's client (or session key), so the official
``openai`` SDK can authenticate with it as its ``api_key``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from eth_account.signers.local import LocalAccount

from ._eip712 import bearer_message, recover_bearer_signer
from ._errors import InvalidBearerToken
from ._types import UINT64_MAX, Domain, check_bytes32, check_uint

PREFIX = "tsk1"
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_HEX130 = re.compile(r"[0-9a-fA-F]{130}")
_DECIMAL = re.compile(r"0|[1-9][0-9]*")


@dataclass(frozen=True)
class BearerToken:
    """A client-signed token naming a channel, valid until ``expires_at`` (unix seconds)."""

    channel_id: bytes
    expires_at: int
    signature: bytes = field(repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_id", check_bytes32("channel_id", self.channel_id))
        check_uint("expires_at", self.expires_at, UINT64_MAX)
        if not isinstance(self.signature, bytes | bytearray) or len(self.signature) != 65:
            raise ValueError("signature must be 65 bytes")
        object.__setattr__(self, "signature", bytes(self.signature))

    def encode(self) -> str:
        """The wire form (lowercase hex, no ``0x``)."""
        return f"{PREFIX}.{self.channel_id.hex()}.{self.expires_at}.{self.signature.hex()}"

    @classmethod
    def parse(cls, token: str) -> BearerToken:
        """Parse the wire form; ``InvalidBearerToken`` with a readable reason otherwise."""
        if not isinstance(token, str):
            raise InvalidBearerToken("the bearer token must be a string")
        parts = token.strip().split(".")
        if len(parts) != 4 or parts[0] != PREFIX:
            raise InvalidBearerToken(
                "a Tallystick bearer token has the form tsk1.<channelId>.<expiresAt>.<signature>"
            )
        _, channel_hex, expires, sig_hex = parts
        if not _HEX64.fullmatch(channel_hex):
            raise InvalidBearerToken("the channel id must be 64 hex characters")
        if not _DECIMAL.fullmatch(expires) or int(expires) > UINT64_MAX:
            raise InvalidBearerToken("expiresAt must be unix seconds as a decimal integer")
        if not _HEX130.fullmatch(sig_hex):
            raise InvalidBearerToken("the signature must be 130 hex characters (r || s || v)")
        return cls(bytes.fromhex(channel_hex), int(expires), bytes.fromhex(sig_hex))

    def signer(self, domain: Domain) -> str:
        """The address that signed this token under ``domain`` (``InvalidSignature`` if none)."""
        return recover_bearer_signer(domain, self.channel_id, self.expires_at, self.signature)

    def expired(self, now: float | None = None) -> bool:
        """True once ``expires_at`` is not in the future."""
        return self.expires_at <= (time.time() if now is None else now)


def make_bearer_token(
    account: LocalAccount, domain: Domain, channel_id: bytes, ttl_s: int
) -> BearerToken:
    """Sign a token for ``channel_id`` valid for ``ttl_s`` seconds from now."""
    if ttl_s <= 0:
        raise ValueError(f"ttl_s must be positive, got {ttl_s}")
    expires_at = int(time.time()) + int(ttl_s)
    signed = account.sign_message(bearer_message(domain, channel_id, expires_at))
    return BearerToken(channel_id, expires_at, bytes(signed.signature))
