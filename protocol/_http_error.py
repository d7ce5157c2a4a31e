"""``HttpError``: an HTTP refusal and its OpenAI error envelope (docs/protocol.md §8).

The node (``ApiError``) and the client's gateway (``GatewayError``) answer errors in the
same wire shape, ``{"error": {"message", "type", "param", "code"}}``; each mixes this in
under its own exception tree and names its own ``type`` per status.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = ["HttpError"]


class HttpError(Exception):
    """``status``, the envelope's fields and the response's extra ``headers``.

    ``type`` defaults to ``TYPES[status]``, else ``DEFAULT_TYPE``.
    """

    TYPES: ClassVar[dict[int, str]] = {}
    DEFAULT_TYPE: ClassVar[str] = "server_error"

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        param: str | None = None,
        *,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type or self.TYPES.get(status, self.DEFAULT_TYPE)
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
