"""Inference engines of the provider node: the interface, the in-process and upstream engines.

Errors: see ``_errors.py`` for the tree (all derive from ``EngineError``).
``TransformersEngine`` is imported on first use, so ``FakeEngine`` users never load torch.
"""

from typing import TYPE_CHECKING, Any

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
from ._gguf_cache import cache_root, cached_gguf_folder, convert_gguf, gguf_cache_entry
from ._llamacpp import (
    LLAMA_CPP_PYTHON_VERSION,
    LlamaCppEngine,
    built_llama_cpp_python,
    built_llama_server,
    find_llama_server,
    llama_cpp_python_server,
)
from ._loading import LoadedModel, LoadedTokenizer, default_model_name, load_model, load_tokenizer
from ._tiny import TINY_CHAT_TEMPLATE, tiny_tokenizer_bundle, tiny_tokenizer_json
from ._upstream import UpstreamEngine

__all__ = [
    "LLAMA_CPP_PYTHON_VERSION",
    "TINY_CHAT_TEMPLATE",
    "Detokenizer",
    "Engine",
    "EngineError",
    "EngineOverloaded",
    "EngineStopped",
    "FakeEngine",
    "LlamaCppEngine",
    "LoadedModel",
    "LoadedTokenizer",
    "ModelLoadError",
    "Prompt",
    "PromptTooLong",
    "SamplingParams",
    "Timing",
    "TokenEvent",
    "TransformersEngine",
    "UpstreamEngine",
    "UpstreamError",
    "UpstreamUnavailable",
    "built_llama_cpp_python",
    "built_llama_server",
    "cache_root",
    "cached_gguf_folder",
    "convert_gguf",
    "default_model_name",
    "find_llama_server",
    "gguf_cache_entry",
    "llama_cpp_python_server",
    "load_model",
    "load_tokenizer",
    "tiny_tokenizer_bundle",
    "tiny_tokenizer_json",
]

if TYPE_CHECKING:
    from ._transformers import TransformersEngine


def __getattr__(name: str) -> Any:
    if name == "TransformersEngine":
        from ._transformers import TransformersEngine

        return TransformersEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
