"""The exception tree of ``tallystick.node.engines``.

    TallystickError                 (tallystick.protocol)
    └── EngineError                 an engine cannot serve a request
        ├── ModelLoadError          the model, GGUF file or hub id cannot be loaded
        ├── PromptTooLong           the prompt leaves no room to generate in the context
        ├── EngineOverloaded        the request queue is full; retry later
        ├── EngineStopped           the engine is not running (not started, or stopping)
        └── UpstreamError           an upstream OpenAI-compatible server answered with an error
            └── UpstreamUnavailable the upstream server cannot be reached or timed out

Foreign errors (torch, transformers, httpx) are translated at the boundary with
``raise X(...) from exc``, so the node only ever catches these.
"""

from __future__ import annotations

from tallystick.protocol import TallystickError

__all__ = [
    "EngineError",
    "EngineOverloaded",
    "EngineStopped",
    "ModelLoadError",
    "PromptTooLong",
    "UpstreamError",
    "UpstreamUnavailable",
]


class EngineError(TallystickError):
    """An engine cannot serve a request."""


class ModelLoadError(EngineError):
    """The model, GGUF file or hub id cannot be loaded."""


class PromptTooLong(EngineError):
    """The prompt has ``prompt_tokens`` ids but the context holds ``context_length``."""

    def __init__(self, prompt_tokens: int, context_length: int) -> None:
        super().__init__(prompt_tokens, context_length)
        self.prompt_tokens = prompt_tokens
        self.context_length = context_length

    def __str__(self) -> str:
        return (
            f"prompt has {self.prompt_tokens} tokens, the model's context is "
            f"{self.context_length} tokens and at least one must be left to generate"
        )


class EngineOverloaded(EngineError):
    """The request queue is full (``max_queue`` waiting requests)."""

    def __init__(self, max_queue: int) -> None:
        super().__init__(max_queue)
        self.max_queue = max_queue

    def __str__(self) -> str:
        return f"engine queue is full ({self.max_queue} requests waiting); retry later"


class EngineStopped(EngineError):
    """The engine is not running: call ``start()`` first, or it is shutting down."""


class UpstreamError(EngineError):
    """The upstream server answered with an error (``status`` is its HTTP status, or None)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message, status)
        self.message = message
        self.status = status

    def __str__(self) -> str:
        prefix = f"upstream returned HTTP {self.status}: " if self.status else "upstream error: "
        return prefix + self.message


class UpstreamUnavailable(UpstreamError):
    """The upstream server cannot be reached, or did not answer in time."""

    def __str__(self) -> str:
        return f"upstream unavailable: {self.message}"
