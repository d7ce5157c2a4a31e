"""The GGUF conversion cache: keys, atomic publication, fallbacks (no model), and on the real
SmolLM2 GGUF that the cached folder gives byte-identical tokenizers and identical weights
and greedy outputs."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from tallystick.node.engines import (
    LoadedModel,
    ModelLoadError,
    SamplingParams,
    TransformersEngine,
    cache_root,
    load_model,
    load_tokenizer,
)
from tallystick.node.engines import _gguf_cache as gguf_cache
from tallystick.node.engines._gguf_cache import (
    MANIFEST,
    cached_gguf_folder,
    gguf_cache_entry,
    publish,
)
from tallystick.node.engines._loading import default_model_name, eos_ids_of

from tests.kit.model import chat, run

# --- no model ------------------------------------------------------------------------------


def test_cache_root_is_configurable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TALLYSTICK_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "tallystick"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "tallystick"
    monkeypatch.setenv("TALLYSTICK_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"


def test_entry_key_follows_content_and_mtime(tmp_path: Path) -> None:
    gguf = tmp_path / "m.Q4_0.gguf"
    gguf.write_bytes(b"GGUF" + b"a" * 1000)
    first = gguf_cache_entry(gguf, "float32", tmp_path)
    assert first == gguf_cache_entry(gguf, "float32", tmp_path)
    assert first.parent == tmp_path / "models"
    assert first.name.startswith("m.Q4_0-float32-")
    assert gguf_cache_entry(gguf, "float16", tmp_path) != first

    stat = gguf.stat()
    gguf.write_bytes(b"GGUF" + b"b" * 1000)  # same size, same mtime, other bytes
    os.utime(gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    changed = gguf_cache_entry(gguf, "float32", tmp_path)
    assert changed != first
    os.utime(gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # touched
    assert gguf_cache_entry(gguf, "float32", tmp_path) not in (first, changed)


def _write_model(folder: Path) -> None:
    (folder / "weights").write_text("w")


def test_publish_builds_once_and_later_calls_reuse(tmp_path: Path) -> None:
    entry, calls = tmp_path / "models" / "e", []

    def build(tmp: Path) -> None:
        calls.append(tmp)
        assert not entry.exists()  # built aside, renamed into place
        _write_model(tmp)

    assert publish(entry, build, source=tmp_path) == entry
    assert publish(entry, build, source=tmp_path) == entry
    assert len(calls) == 1
    assert (entry / "weights").read_text() == "w"
    assert (entry / MANIFEST).is_file()
    assert oct(entry.stat().st_mode & 0o777) == "0o755"
    assert [p.name for p in entry.parent.iterdir() if p.is_dir()] == ["e"]


def test_concurrent_publishers_build_once(tmp_path: Path) -> None:
    entry, calls, results = tmp_path / "models" / "e", [], []

    def build(tmp: Path) -> None:
        calls.append(tmp)
        time.sleep(0.3)  # the other thread arrives meanwhile and must wait on the lock
        _write_model(tmp)

    threads = [
        threading.Thread(target=lambda: results.append(publish(entry, build, source=tmp_path)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert results == [entry, entry]


def test_failed_build_leaves_nothing_and_leftovers_are_cleared(tmp_path: Path) -> None:
    entry = tmp_path / "models" / "e"

    def fail(tmp: Path) -> None:
        _write_model(tmp)
        raise ModelLoadError("boom")

    with pytest.raises(ModelLoadError, match="boom"):
        publish(entry, fail, source=tmp_path)
    assert [p.name for p in entry.parent.iterdir() if p.is_dir()] == []

    # A crash leaves a temp folder and maybe an entry without manifest: both are replaced.
    (entry.parent / ".e.x1.tmp").mkdir()
    entry.mkdir()
    (entry / "half").write_text("")
    publish(entry, _write_model, source=tmp_path)
    assert sorted(p.name for p in entry.iterdir()) == [MANIFEST, "weights"]
    assert [p.name for p in entry.parent.iterdir() if p.is_dir()] == ["e"]


def test_unreadable_gguf_fails_clearly_and_caches_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TALLYSTICK_CACHE_DIR", str(tmp_path / "cache"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(ModelLoadError, match=r"cannot load .*bad\.gguf"):
        load_model(str(bad))
    models = tmp_path / "cache" / "models"
    assert [p for p in models.iterdir() if p.is_dir()] == []


def test_unwritable_cache_falls_back_to_the_gguf(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    monkeypatch.setenv("TALLYSTICK_CACHE_DIR", str(tmp_path / "cache"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with caplog.at_level(logging.WARNING), pytest.raises(ModelLoadError, match="cannot load"):
        load_model(str(bad))  # the direct GGUF read ran (and failed on the bytes)
    assert "cannot cache the conversion of" in caplog.text
    assert "reading the GGUF directly" in caplog.text


# --- the real GGUF -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def direct(model_dir: Path, model_file: str) -> LoadedModel:
    """The GGUF read by transformers directly: what the cache must reproduce."""
    gguf = model_dir / model_file
    model, tokenizer = gguf_cache.dequantise(gguf, "float32")
    model.eval()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=default_model_name(str(gguf)),
        context_length=int(model.config.max_position_embeddings),
        eos_ids=eos_ids_of(model, tokenizer),
    )


@pytest.fixture(scope="module")
def converted(direct: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``direct`` saved by the cache's own save step (no second dequantisation)."""
    folder = tmp_path_factory.mktemp("converted") / "smol"
    gguf_cache.save_folder(direct.model, direct.tokenizer, folder)
    return folder


@pytest.mark.model
def test_cached_tokenizer_bundle_is_byte_identical(direct: LoadedModel, converted: Path) -> None:
    from tallystick.protocol import TokenizerBundle

    want = TokenizerBundle.from_hf(direct.tokenizer)
    got = load_tokenizer(str(converted))
    assert TokenizerBundle.from_hf(got.tokenizer).canonical_bytes() == want.canonical_bytes()
    assert got.context_length == direct.context_length == 8192


@pytest.mark.model
def test_cached_weights_and_greedy_outputs_are_identical(
    direct: LoadedModel, converted: Path
) -> None:
    import torch

    cached = load_model(str(converted))
    assert cached.eos_ids == direct.eos_ids
    want, got = direct.model.state_dict(), cached.model.state_dict()
    assert sorted(got) == sorted(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    greedy = SamplingParams(max_tokens=16, temperature=0.0)
    questions = ["What is the capital of France?", "Write a haiku about rain."]
    assert _answers(cached, questions, greedy) == _answers(direct, questions, greedy)


@pytest.mark.model
def test_load_model_reads_the_gguf_through_the_cache(
    direct: LoadedModel, model_dir: Path, model_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``load_model(gguf)`` converts into the default cache once (if no earlier run did);
    then loads read the folder and never dequantise again."""
    from tallystick.protocol import TokenizerBundle

    gguf = model_dir / model_file
    load_model(str(gguf))  # warms the cache when cold
    entry = cached_gguf_folder(gguf)
    assert entry is not None

    def refuse(*_: Any) -> Any:
        raise AssertionError("dequantised again")

    monkeypatch.setattr(gguf_cache, "dequantise", refuse)
    started = time.perf_counter()
    loaded = load_model(str(gguf))
    logging.getLogger(__name__).info("cached load: %.2fs", time.perf_counter() - started)
    assert loaded.name == "SmolLM2-135M-Instruct"
    assert (loaded.context_length, loaded.eos_ids) == (direct.context_length, direct.eos_ids)
    bundle = TokenizerBundle.from_hf(loaded.tokenizer)
    assert bundle.hash() == TokenizerBundle.from_hf(direct.tokenizer).hash()
    assert load_tokenizer(str(gguf)).tokenizer.name_or_path == str(entry)


def _answers(loaded: LoadedModel, questions: list[str], params: SamplingParams) -> list[Any]:
    engine = TransformersEngine(loaded, max_batch=len(questions))

    async def body() -> list[Any]:
        await engine.start()
        try:
            streams = [engine.generate(chat(engine.counter, q), params) for q in questions]
            return list(await asyncio.gather(*(_ids(s) for s in streams)))
        finally:
            await engine.stop()

    return run(body())


async def _ids(stream: Any) -> list[int]:
    return [i async for e in stream for i in e.token_ids]
