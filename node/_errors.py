"""The exception tree of ``tallystick.node`` (the daemon; engines have their own).

    TallystickError                 (tallystick.protocol)
    └── NodeServiceError            the node (the daemon) cannot do what was asked
        ├── ConfigError             a setting is missing or invalid (the CLI prints it, exits 2)
        ├── KeyLoadError            the provider key or keystore cannot be read
        └── ApiError                an HTTP request is refused; carries status and the
                                    OpenAI error envelope fields (message, type, param, code)
                                    (``tallystick.protocol``'s ``HttpError`` carries them)

Every HTTP error leaves the app as ``ApiError.envelope()``; foreign errors are translated at
the boundary (``raise ApiError(...) from exc``). Not to be confused with the client's
``NodeError`` ("the node answered with an error"), which is what an ``ApiError`` becomes on
the other side of the wire.
"""

from __future__ import annotations

from tallystick.protocol._errors import TallystickError
from tallystick.protocol._http_error import HttpError

__all__ = ["ApiError", "ConfigError", "KeyLoadError", "NodeServiceError", "chain_unavailable"]

CHAIN_RETRY_AFTER_S = 5


class NodeServiceError(TallystickError):
    """The node (the daemon) cannot do what was asked."""


class ConfigError(NodeServiceError):
    """A setting is missing or invalid."""


class KeyLoadError(NodeServiceError):
    """The provider key (``--key``) or keystore (``--keystore``) cannot be read."""


_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "payment_required",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_overloaded",
}


class ApiError(HttpError, NodeServiceError):
    """An HTTP request refused with ``status`` and an OpenAI error envelope."""

    TYPES = _TYPES
    DEFAULT_TYPE = "server_error"


def chain_unavailable(exc: Exception) -> ApiError:
    """503 for a request that needs the chain while its RPC does not answer."""
    return ApiError(
        503,
        f"the node cannot read the chain right now ({exc}); retry shortly",
        type="server_error",
        code="chain_unavailable",
        headers={"retry-after": str(CHAIN_RETRY_AFTER_S)},
    )
