"""Loading a model for TransformersEngine: a local folder, a GGUF file or a hub id."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._errors import ModelLoadError

__all__ = ["LoadedModel", "LoadedTokenizer", "default_model_name", "load_model", "load_tokenizer"]

log = logging.getLogger("tallystick.node.engines")

# Quantisation suffixes of GGUF file names: "Q4_1", "Q4_K_M", "IQ3_XS", "F16", "BF16", ...
_QUANT_SUFFIX = re.compile(r"[.\-_](?:I?Q\d\w*|BF16|FP?16|FP?32)$", re.IGNORECASE)


@dataclass(frozen=True)
class LoadedModel:
    model: Any  # a transformers causal LM, in eval mode
    tokenizer: Any  # its transformers tokenizer
    name: str
    context_length: int
    eos_ids: frozenset[int]


@dataclass(frozen=True)
class LoadedTokenizer:
    tokenizer: Any  # a transformers tokenizer
    name: str
    context_length: int


def load_tokenizer(source: str, *, cache: bool = True) -> LoadedTokenizer:
    """Load only the tokenizer and config of ``source`` (for metering an upstream server).

    A GGUF converted by an earlier ``load_model`` is read from the cache; otherwise the GGUF
    itself is read (converting all its weights just for the tokenizer would not pay).
    """
    folder, gguf_file = _locate(source)
    if gguf_file and cache:
        cached = _cached(Path(folder) / gguf_file)
        if cached is not None:
            folder, gguf_file = str(cached), None
    log.info("loading tokenizer from %s", source)
    tokenizer = from_pretrained("AutoTokenizer", source, folder, gguf_file)
    config = from_pretrained("AutoConfig", source, folder, gguf_file)
    return LoadedTokenizer(
        tokenizer=tokenizer,
        name=default_model_name(source),
        context_length=int(getattr(config, "max_position_embeddings", 2048)),
    )


def default_model_name(source: str) -> str:
    """The served name: the file or folder stem without a quantisation suffix."""
    stem = Path(source.rstrip("/")).name
    if stem.lower().endswith(".gguf"):
        stem = stem[: -len(".gguf")]
    return _QUANT_SUFFIX.sub("", stem) or stem


def load_model(source: str, *, dtype: str = "float32", cache: bool = True) -> LoadedModel:
    """Load ``source`` (a model folder, a ``.gguf`` file, or a hub id) for CPU inference.

    A GGUF is dequantised once into the conversion cache (``_gguf_cache.py``) and read from
    there; ``cache=False`` (or an unwritable cache) reads the GGUF itself every time.
    """
    folder, gguf_file = _locate(source)
    started = time.perf_counter()
    if gguf_file and cache:
        folder, gguf_file = _converted(source, Path(folder) / gguf_file, dtype)
    log.info("loading tokenizer from %s", folder if not gguf_file else source)
    tokenizer = from_pretrained("AutoTokenizer", source, folder, gguf_file)
    if gguf_file:
        log.info("loading weights from %s (dequantising GGUF to %s)", gguf_file, dtype)
    else:
        log.info("loading weights from %s", folder)
    model = from_pretrained("AutoModelForCausalLM", source, folder, gguf_file, dtype=dtype)
    model.eval()
    params = sum(p.numel() for p in model.parameters())
    log.info("loaded %s: %.1fM parameters in %.1fs", source, params / 1e6, _since(started))
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=default_model_name(source),
        context_length=int(getattr(model.config, "max_position_embeddings", 2048)),
        eos_ids=eos_ids_of(model, tokenizer),
    )


def eos_ids_of(model: Any, tokenizer: Any) -> frozenset[int]:
    """Every id that ends a sequence (generation config, model config, tokenizer)."""
    ids: set[int] = set()
    for value in (
        getattr(getattr(model, "generation_config", None), "eos_token_id", None),
        getattr(model.config, "eos_token_id", None),
        tokenizer.eos_token_id,
    ):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return frozenset(ids)


def _converted(source: str, gguf: Path, dtype: str) -> tuple[str, str | None]:
    """The cached folder of ``gguf`` (converting it on first use), or the GGUF itself when
    the cache cannot be written."""
    from ._gguf_cache import convert_gguf

    try:
        return str(convert_gguf(gguf, dtype)), None
    except OSError as exc:
        log.warning(
            "cannot cache the conversion of %s (%s): reading the GGUF directly", source, exc
        )
        return str(gguf.parent), gguf.name


def _cached(gguf: Path) -> Path | None:
    from ._gguf_cache import cached_gguf_folder

    try:
        return cached_gguf_folder(gguf)
    except OSError:  # unreadable GGUF: the direct load reports it
        return None


def _locate(source: str) -> tuple[str, str | None]:
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(f"{source} is a file but not a .gguf file")
        return str(path.parent), path.name
    if path.is_dir():
        return str(path), None
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise ModelLoadError(
            f"model path {source} does not exist (the demo's model: `tallystick-node model "
            "fetch` downloads SmolLM2-135M-Instruct)"
        )
    return source, None  # a hub id


def from_pretrained(
    kind: str, source: str, folder: str, gguf_file: str | None, **kwargs: Any
) -> Any:
    """``transformers.<kind>.from_pretrained``, its errors as ``ModelLoadError``."""
    import transformers

    cls = getattr(transformers, kind)
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    try:
        return cls.from_pretrained(folder, **kwargs)
    except OSError as exc:
        hint = "" if Path(folder).exists() else " (a hub id needs network access to the hub)"
        raise ModelLoadError(f"cannot load {source}{hint}: {exc}") from exc
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot load {source}: {exc}") from exc


def _since(started: float) -> float:
    return time.perf_counter() - started
