"""Inference engines of the provider node: the interface, the in-process and upstream engines.

Errors: see ``_errors.py`` for the tree (all derive from ``EngineError``).
"""

from ._base import Engine, Prompt, SamplingParams, Timing, TokenEvent
from ._detok import Detokenizer
from ._errors import (
    EngineError,
    EngineOverloaded,
    EngineStopped,
    ModelLoadError,
    PromptTooLong,
    UpstreamError,
    UpstreamUnavailable,
)
from ._fake import FakeEngine
from ._tiny import TINY_CHAT_TEMPLATE, tiny_tokenizer_bundle, tiny_tokenizer_json

__all__ = [
    "TINY_CHAT_TEMPLATE",
    "Detokenizer",
    "Engine",
    "EngineError",
    "EngineOverloaded",
    "EngineStopped",
    "FakeEngine",
    "ModelLoadError",
    "Prompt",
    "PromptTooLong",
    "SamplingParams",
    "Timing",
    "TokenEvent",
    "UpstreamError",
    "UpstreamUnavailable",
    "tiny_tokenizer_bundle",
    "tiny_tokenizer_json",
]
