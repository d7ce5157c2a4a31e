"""The exception tree of ``tallystick.node`` (the daemon; engines have their own).

    TallystickError                 (tallystick.protocol)
    └── NodeError                   the node cannot do what was asked
        ├── ConfigError             a setting is missing or invalid (the CLI prints it, exits 2)
        ├── KeyLoadError            the provider key or keystore cannot be read
        └── ApiError                an HTTP request is refused; carries status and the
                                    OpenAI error envelope fields (message, type, param, code)

Every HTTP error leaves the app as ``ApiError.envelope()``; foreign errors are translated at
the boundary (``raise ApiError(...) from exc``).
"""

from __future__ import annotations

from typing import Any

from tallystick.protocol._errors import TallystickError

__all__ = ["ApiError", "ConfigError", "KeyLoadError", "NodeError", "chain_unavailable"]

CHAIN_RETRY_AFTER_S = 5


class NodeError(TallystickError):
    """The node cannot do what was asked."""


class ConfigError(NodeError):
    """A setting is missing or invalid."""


class KeyLoadError(NodeError):
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


class ApiError(NodeError):
    """An HTTP request refused with ``status`` and an OpenAI error envelope."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type or _TYPES.get(status, "server_error")
        self.headers = headers or {}

    def envelope(self) -> dict[str, Any]:
        """``{"error": {"message", "type", "param", "code"}}``."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def chain_unavailable(exc: Exception) -> ApiError:
    """503 for a request that needs the chain while its RPC does not answer."""
    return ApiError(
        503,
        f"the node cannot read the chain right now ({exc}); retry shortly",
        type="server_error",
        code="chain_unavailable",
        headers={"retry-after": str(CHAIN_RETRY_AFTER_S)},
    )
