"""The GGUF conversion cache: a GGUF dequantised once into a plain transformers folder.

Dequantising a GGUF and building its tokenizer takes transformers tens of seconds; loading
the same weights from safetensors takes about one. The first load of a GGUF saves the
dequantised model and its tokenizer (exactly the objects the GGUF path yields) under
``<cache root>/models/<stem>-<dtype>-<key>/``; later loads read that folder.

- Cache root: ``$TALLYSTICK_CACHE_DIR``, else ``$XDG_CACHE_HOME/tallystick``, else
  ``~/.cache/tallystick``.
- Key: the GGUF's size, mtime and sha256 (whole file up to 256 MiB, else its first and last
  32 MiB), the transformers version (its GGUF converters make the weights and tokenizer)
  and this module's format version. Any change gives a new entry; old ones are not deleted.
- Atomic: an entry is built in a temporary sibling folder and renamed into place, so a
  folder that exists is complete. A lock file makes a second process wait for the first
  one's conversion instead of repeating it; a crashed conversion leaves only a temp folder,
  removed by the next one.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["cache_root", "cached_gguf_folder", "convert_gguf", "gguf_cache_entry"]

log = logging.getLogger("tallystick.node.engines")

CACHE_ENV = "TALLYSTICK_CACHE_DIR"
FORMAT = 1  # bump when the folder layout or the conversion changes
MANIFEST = "tallystick-gguf.json"
_FULL_HASH_LIMIT = 256 << 20
_PART = 32 << 20
_CHUNK = 1 << 20


def cache_root() -> Path:
    """Where tallystick caches data (``$TALLYSTICK_CACHE_DIR`` overrides)."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "tallystick"


def gguf_cache_entry(gguf: Path, dtype: str = "float32", root: Path | None = None) -> Path:
    """The cache folder for ``gguf`` dequantised to ``dtype`` (it may not exist yet)."""
    stem = gguf.name[: -len(".gguf")] if gguf.name.lower().endswith(".gguf") else gguf.name
    return (root or cache_root()) / "models" / f"{stem}-{dtype}-{_key(gguf)[:16]}"


def cached_gguf_folder(gguf: Path, dtype: str = "float32", root: Path | None = None) -> Path | None:
    """The converted folder of ``gguf`` if an earlier load made one, else None."""
    entry = gguf_cache_entry(gguf, dtype, root)
    return entry if _complete(entry) else None


def convert_gguf(gguf: Path, dtype: str = "float32", root: Path | None = None) -> Path:
    """The converted folder of ``gguf``, converting it first if no earlier load did.

    Raises ``ModelLoadError`` when transformers cannot read the GGUF and ``OSError`` when the
    cache cannot be written.
    """
    entry = gguf_cache_entry(gguf, dtype, root)
    return publish(entry, lambda tmp: _convert(gguf, dtype, tmp), source=gguf)


def publish(entry: Path, build: Callable[[Path], Any], *, source: Path) -> Path:
    """Make ``entry`` exist, complete, calling ``build(tmp_folder)`` at most once across
    processes; returns ``entry``."""
    if _complete(entry):
        return entry
    entry.parent.mkdir(parents=True, exist_ok=True)
    with _locked(entry):
        if _complete(entry):  # another process converted it while we waited
            return entry
        _remove_stale(entry)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".tmp", dir=entry.parent))
        try:
            tmp.chmod(0o755)  # mkdtemp makes it private; the files in it are not
            build(tmp)
            _write_manifest(tmp, source)
            tmp.rename(entry)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return entry


def _convert(gguf: Path, dtype: str, dest: Path) -> None:
    log.info(
        "first load of %s: converting it once to a transformers folder in %s "
        "(dequantising takes a while; later loads take seconds)",
        gguf.name,
        dest.parent,
    )
    started = time.perf_counter()
    model, tokenizer = dequantise(gguf, dtype)
    log.info("dequantised %s in %.1fs; saving", gguf.name, time.perf_counter() - started)
    save_folder(model, tokenizer, dest)
    log.info("converted %s in %.1fs", gguf.name, time.perf_counter() - started)


def dequantise(gguf: Path, dtype: str) -> tuple[Any, Any]:
    """The model and tokenizer exactly as transformers loads them from the GGUF."""
    from ._loading import from_pretrained

    source, folder = str(gguf), str(gguf.parent)
    tokenizer = from_pretrained("AutoTokenizer", source, folder, gguf.name)
    model = from_pretrained("AutoModelForCausalLM", source, folder, gguf.name, dtype=dtype)
    return model, tokenizer


def save_folder(model: Any, tokenizer: Any, dest: Path) -> None:
    """Save a GGUF-loaded model and tokenizer as a plain transformers folder."""
    import torch
    from transformers import AutoModelForCausalLM

    # A GGUF-loaded model carries its quantiser and refuses save_pretrained; a plain model
    # of the same config, holding the very same (dequantised) tensors, saves normally. It
    # is built on the meta device: no memory or random init for weights about to be replaced.
    config = copy.deepcopy(model.config)  # the loaded model stays as it was
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.architectures = [type(model).__name__]
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    plain.load_state_dict(model.state_dict(), strict=True, assign=True)
    plain.generation_config = model.generation_config
    plain.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def _key(gguf: Path) -> str:
    import transformers

    stat = gguf.stat()
    digest = hashlib.sha256()
    digest.update(
        f"{FORMAT}:{transformers.__version__}:{stat.st_size}:{stat.st_mtime_ns}:".encode()
    )
    for chunk in _content(gguf, stat.st_size):
        digest.update(chunk)
    return digest.hexdigest()


def _content(path: Path, size: int) -> Iterator[bytes]:
    """The whole file when small, else its head and tail (with size and mtime, enough to
    tell files apart without reading gigabytes at every start)."""
    with path.open("rb") as f:
        if size <= _FULL_HASH_LIMIT:
            while chunk := f.read(_CHUNK):
                yield chunk
            return
        yield f.read(_PART)
        f.seek(size - _PART)
        yield f.read(_PART)


def _complete(entry: Path) -> bool:
    return (entry / MANIFEST).is_file()


def _write_manifest(folder: Path, source: Path) -> None:
    import transformers

    manifest = {
        "format": FORMAT,
        "source": str(source.resolve()),
        "size": source.stat().st_size,
        "transformers": transformers.__version__,
        "created": int(time.time()),
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


@contextmanager
def _locked(entry: Path) -> Iterator[None]:
    with (entry.parent / f".{entry.name}.lock").open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process converting %s", entry.name)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _remove_stale(entry: Path) -> None:
    """Leftovers of a crashed conversion (we hold the lock: nobody else is building)."""
    for tmp in entry.parent.glob(f".{entry.name}.*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)
    if entry.exists():  # a folder without a manifest: incomplete, never published by us
        shutil.rmtree(entry)
