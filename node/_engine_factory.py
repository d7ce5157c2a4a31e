"""Builds the engine named in the settings (imports torch only when it is needed)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ._errors import ConfigError

if TYPE_CHECKING:
    from ._settings import Settings
    from .engines import Engine

__all__ = ["build_engine"]


async def build_engine(settings: Settings) -> Engine:
    """Load the model (in a thread: it takes seconds) or connect to the upstream server."""
    from . import engines

    if settings.engine == "upstream":
        if not settings.upstream_url:
            raise ConfigError("--engine upstream needs --upstream-url")
        upstream = getattr(engines, "UpstreamEngine", None)
        if upstream is None:
            raise ConfigError("this build has no upstream engine; use --engine transformers")
        engine: Engine = await upstream.connect(
            settings.upstream_url,
            model_name=settings.model_name or settings.model,
            max_queue=settings.max_queue,
        )
        return engine
    if not settings.model:
        raise ConfigError("--model PATH|HUB_ID is required for the transformers engine")
    from .engines._transformers import TransformersEngine

    return await asyncio.to_thread(
        TransformersEngine.load,
        settings.model,
        model_name=settings.model_name,
        max_batch=settings.max_batch,
        max_queue=settings.max_queue,
    )
