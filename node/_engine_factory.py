"""Builds the engine named in the settings (imports torch only when it is needed).

- ``transformers``: ``--model PATH|HUB_ID`` is loaded in-process (in a thread: it takes
  seconds), ``--model-name`` overrides the served id.
- ``upstream``: ``--upstream-url URL`` is the OpenAI-compatible server that generates;
  ``--model PATH|HUB_ID`` is still required, for the tokenizer and chat template the node
  meters with (docs/protocol.md §6) and serves at ``/v1/tally/tokenizer``.
- ``llamacpp``: the node runs ``llama-server`` on ``--model FILE.gguf`` with ``--max-batch``
  parallel slots (``--llama-server``, ``--llama-ctx``, ``--llama-threads``, ``--llama-args``)
  and meters it as an upstream.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ._errors import ConfigError

if TYPE_CHECKING:
    from ._settings import Settings
    from .engines import Engine

__all__ = ["build_engine", "check_engine_settings"]

log = logging.getLogger("tallystick.node")


def check_engine_settings(settings: Settings) -> None:
    """``ConfigError`` for a missing or malformed engine option, before anything loads."""
    if not settings.model:
        raise ConfigError(
            "--model PATH|HUB_ID is required (with --engine upstream: for its tokenizer)"
        )
    if settings.engine == "upstream":
        _upstream_url(settings.upstream_url)
    if settings.engine == "llamacpp":
        if not settings.model.lower().endswith(".gguf"):
            raise ConfigError(f"--engine llamacpp needs --model FILE.gguf, got {settings.model}")
        _llama_args(settings.llama_args)
        from .engines import ModelLoadError, find_llama_server

        try:
            find_llama_server(settings.llama_server)
        except ModelLoadError as exc:
            raise ConfigError(str(exc)) from exc


async def build_engine(settings: Settings) -> Engine:
    """The engine ``settings`` name; ``ConfigError`` for a missing or malformed option."""
    from . import engines

    check_engine_settings(settings)
    source = str(settings.model)
    try:
        if settings.engine == "upstream":
            engine = await _upstream(settings, _upstream_url(settings.upstream_url))
            return await asyncio.to_thread(_commit_weights, engine, source)
        if settings.engine == "llamacpp":
            engine = await asyncio.to_thread(_llamacpp, settings)
            return await asyncio.to_thread(_commit_weights, engine, source)
        from .engines._transformers import TransformersEngine

        engine = await asyncio.to_thread(
            TransformersEngine.load,
            source,
            model_name=settings.model_name,
            max_batch=settings.max_batch,
            max_queue=settings.max_queue,
        )
        if settings.test_only_perturb_weights:
            _cheat(engine, settings.test_only_perturb_weights)
        return engine
    except engines.ModelLoadError as exc:
        raise ConfigError(f"--model {settings.model}: {exc}") from exc


def _commit_weights(engine: Engine, source: str) -> Engine:
    """Serve the modelHash of a local ``--model`` an upstream engine runs (§10.5).

    It is the operator's commitment, computed as ``list-model --model`` computes it, so a listing
    made from the same file matches; with no seeded sampler, ``audit`` stays ``"none"``."""
    from tallystick.protocol import model_hash

    if Path(source).exists():
        engine.model_hash = model_hash(source)  # type: ignore[attr-defined]
    return engine


def _cheat(engine: Any, size: float) -> None:
    """TEST ONLY: perturb the served weights, keep claiming the listed modelHash (§10)."""
    from .engines._substitute import substitute

    log.warning(
        "TEST ONLY: serving weights perturbed by %g x each tensor's std while claiming "
        "modelHash 0x%s: every audit of this node must fail",
        size,
        engine.model_hash.hex() if engine.model_hash else "",
    )
    substitute(engine._model, "perturb", size)


def _upstream_url(url: str | None) -> str:
    if not url:
        raise ConfigError("--engine upstream needs --upstream-url URL")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"--upstream-url {url!r} is not an http(s) URL")
    return url


async def _upstream(settings: Settings, url: str) -> Engine:
    from .engines import UpstreamEngine

    options: dict[str, Any] = {
        "upstream_model": settings.upstream_model,
        "api_key": (
            settings.upstream_api_key.get_secret_value() if settings.upstream_api_key else None
        ),
        # The upstream server queues and batches; the node bounds what it has in flight.
        "max_concurrency": settings.max_batch + settings.max_queue,
    }
    if settings.model_name:
        options["model_name"] = settings.model_name
    engine = await asyncio.to_thread(
        UpstreamEngine.from_source, url, str(settings.model), **options
    )
    if settings.llama_ctx:  # a llama_cpp.server's --n_ctx (it does not say it; llama-server does)
        engine.context_length = min(engine.context_length, settings.llama_ctx)
    return engine


def _llama_args(args: str | None) -> list[str]:
    try:
        return shlex.split(args or "")
    except ValueError as exc:
        raise ConfigError(f"--llama-args {args!r}: {exc}") from exc


def _llamacpp(settings: Settings) -> Engine:
    from .engines import LlamaCppEngine, find_llama_server

    return LlamaCppEngine(
        str(settings.model),
        binary=find_llama_server(settings.llama_server),
        parallel=settings.max_batch,
        slot_context=settings.llama_ctx,
        threads=settings.llama_threads,
        extra_args=_llama_args(settings.llama_args),
        model_name=settings.model_name,
        max_queue=settings.max_queue,
    )
