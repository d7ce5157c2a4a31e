"""``GatewayError``: what the gateway answers a caller, as OpenAI's error envelope.

ClientError                     (tallystick.client)
└── GatewayError                an HTTP status, a message, a code: never a stack trace
"""

from __future__ import annotations

from tallystick.protocol._http_error import HttpError

from .._errors import ClientError

__all__ = ["GatewayError"]

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


class GatewayError(HttpError, ClientError):
    """An error for the caller: ``status`` and OpenAI's ``{"error": {...}}`` body."""

    TYPES = _TYPES
    DEFAULT_TYPE = "api_error"
