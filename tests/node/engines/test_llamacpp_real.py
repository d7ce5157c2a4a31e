"""The node's engines in front of a real ``llama-server`` (built by ``make llama``) serving the
real SmolLM2 GGUF: metering with llama.cpp's own token ids, the counting rule, cancellation,
prompt-cache reuse, and ``LlamaCppEngine`` managing the subprocess itself."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tallystick.node.engines import (
    LlamaCppEngine,
    ModelLoadError,
    Prompt,
    SamplingParams,
    UpstreamEngine,
    UpstreamError,
    tiny_tokenizer_bundle,
)

from tests.kit.model import chat, run
from tests.kit.model import generate_all as _gen
from tests.kit.model import started as _started
from tests.kit.net import free_port, wait_http

pytestmark = pytest.mark.model

SLOT_CTX = 1024
SLOTS = 2


@pytest.fixture(scope="module")
def gguf(model_dir: Path, model_file: str) -> str:
    return str(model_dir / model_file)


@pytest.fixture(scope="module")
def llama(
    llama_server_bin: Path, gguf: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A bare llama-server, as a provider already runs it."""
    port = free_port()
    log = (tmp_path_factory.mktemp("llama") / "server.log").open("wb")
    cmd = [str(llama_server_bin), "-m", gguf, "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--parallel", str(SLOTS), "--ctx-size", str(SLOT_CTX * SLOTS), "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", proc, timeout=120, what="llama-server")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def engine(llama: str, gguf: str) -> UpstreamEngine:
    """Not started: each test's event loop starts and stops it (``_collect``, ``_started``)."""
    return UpstreamEngine.from_source(llama, gguf)


async def _collect(
    engine: Any, prompt: Prompt, params: SamplingParams
) -> tuple[list[int], str, Any]:
    return await _started(engine, lambda: _gen(engine, prompt, params))


def _llama_reference(url: str, prompt_ids: list[int], n: int) -> list[int]:
    """llama.cpp's own greedy answer (non-streamed, all generated ids)."""
    body = {"prompt": prompt_ids, "n_predict": n, "temperature": 0, "top_k": 0, "min_p": 0}
    body |= {"return_tokens": True, "cache_prompt": False}
    answer = httpx.post(f"{url}/completion", json=body, timeout=120).json()
    return [int(t) for t in answer["tokens"]]


def test_upstream_detects_llama_server_and_meters_its_own_ids(engine, llama) -> None:
    prompt = chat(engine.counter, "Write a short poem about the sea.")
    ids, text, finish = run(_collect(engine, prompt, SamplingParams(max_tokens=40, temperature=0)))
    assert engine.llamacpp is not None  # native /completion, vocabulary checked at start
    assert engine.context_length == SLOT_CTX  # prompts are bounded by one slot
    assert finish == "length" and len(ids) == 40
    assert ids == _llama_reference(llama, prompt.ids, 40)  # the ids llama.cpp generated
    assert engine.counter.decode(ids) == text  # counting rule: text = decode(ids)


def test_eos_is_billed_and_ends_with_stop(engine, llama) -> None:
    prompt = chat(engine.counter, "What is the capital of France? Answer in one word.")
    ids, text, finish = run(_collect(engine, prompt, SamplingParams(max_tokens=64, temperature=0)))
    assert finish == "stop" and len(ids) < 64
    assert ids[-1] in engine.counter.eos_token_ids  # the EOS id is billed (§6)
    assert ids == _llama_reference(llama, prompt.ids, 64)
    assert "Paris" in text and engine.counter.decode(ids) == text


def test_stop_string_is_applied_by_the_node(engine) -> None:
    prompt = chat(engine.counter, "Count from 1 to 10, separated by commas.")
    params = SamplingParams(max_tokens=40, temperature=0, stop=(",",))
    ids, text, finish = run(_collect(engine, prompt, params))
    assert finish == "stop" and "," not in text
    assert engine.counter.decode(ids).startswith(text + ",")  # ids completing the stop billed


def test_text_completion_sends_the_prompt_ids(engine) -> None:
    text = "The quick brown fox"
    ids = engine.counter.text_prompt_ids(text)
    out, _, finish = run(
        _collect(engine, Prompt(ids=ids, text=text), SamplingParams(max_tokens=8, temperature=0))
    )
    assert finish == "length" and len(out) == 8


def test_split_characters_are_metered_as_llama_cpp_generated_them(engine, llama) -> None:
    # An emoji spans three byte tokens here; llama.cpp sends no chunk for the two that end
    # inside it, and the chunk completing it says (tokens_predicted) that they came first.
    prompt = chat(engine.counter, "Repeat exactly: 🦜🦜🦜 東京 🦜🦜🦜 東京 🦜🦜🦜")
    ids, text, _ = run(_collect(engine, prompt, SamplingParams(max_tokens=48, temperature=0)))
    reference = _llama_reference(llama, prompt.ids, 48)
    assert text.count("🦜") >= 6  # the case this test is about did occur
    assert engine.counter.decode(ids) == text
    assert ids == reference[: len(ids)]  # the ids llama.cpp generated, split ones included
    # Ids of a character still incomplete when the budget ran out were never sent: unbilled.
    assert len(reference) - len(ids) <= 3


def test_closing_the_stream_frees_llama_cpp_slot(engine, llama) -> None:
    async def read_three() -> int:
        await engine.start()
        stream = engine.generate(
            chat(engine.counter, "Tell me a long story about a dragon."),
            SamplingParams(max_tokens=600, temperature=0),
        )
        got = 0
        async for event in stream:
            got += len(event.token_ids)
            if got >= 3:
                break
        await stream.aclose()
        await engine.stop()
        return got

    assert run(read_three()) >= 3
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        slots = httpx.get(f"{llama}/slots", timeout=5).json()
        if not any(s.get("is_processing") for s in slots):
            break
        time.sleep(0.05)
    assert not any(s.get("is_processing") for s in slots), slots


def test_a_shared_prefix_is_read_from_llama_cpp_cache(engine) -> None:
    system = "You are a careful assistant. " * 60
    first = [{"role": "system", "content": system}, {"role": "user", "content": "Hi"}]
    second = [*first, {"role": "assistant", "content": "Hello!"}]
    second.append({"role": "user", "content": "How are you?"})
    params = SamplingParams(max_tokens=4, temperature=0)
    before = 0
    for messages in (first, second):
        prompt = Prompt(ids=engine.counter.chat_prompt_ids(messages), messages=messages)
        before = engine.prompt_tokens_cached
        ids, _, _ = run(_collect(engine, prompt, params))
        assert len(ids) == 4
    shared = len(engine.counter.chat_prompt_ids(first)) - 2
    assert engine.prompt_tokens_cached - before >= shared


def test_concurrent_streams_are_each_metered(engine) -> None:
    async def many() -> list[tuple[list[int], str, Any]]:
        prompts = [chat(engine.counter, f"Say something about the number {i}.") for i in range(4)]
        params = SamplingParams(max_tokens=12, temperature=0)
        return await _started(
            engine, lambda: asyncio.gather(*(_gen(engine, p, params) for p in prompts))
        )

    for ids, text, finish in run(many()):
        assert len(ids) == 12 and finish == "length"
        assert engine.counter.decode(ids) == text


def test_another_tokenizer_is_refused_at_start(llama) -> None:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    bundle = tiny_tokenizer_bundle()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(bundle.tokenizer_json), eos_token=bundle.eos_token
    )
    tokenizer.chat_template = bundle.chat_template
    other = UpstreamEngine(llama, tokenizer, model_name="tiny", context_length=256)
    with pytest.raises(UpstreamError, match="tokenises differently"):
        run(other.start())


def test_llamacpp_engine_runs_and_stops_llama_server(llama_server_bin, gguf) -> None:
    eng = LlamaCppEngine(gguf, binary=llama_server_bin, parallel=2, slot_context=512, threads=1)
    assert eng.context_length == 512

    async def body() -> Any:
        await eng.start()
        process = eng.process
        assert process is not None and process.poll() is None
        try:
            params = SamplingParams(max_tokens=6, temperature=0)
            ids, text, finish = await _gen(eng, chat(eng.counter, "Hello!"), params)
            assert len(ids) == 6 and finish == "length" and eng.counter.decode(ids) == text
            assert eng.stats()["max_batch"] == 2
            async with httpx.AsyncClient(base_url=eng.url) as other:  # another local user
                assert (await other.get("/health")).status_code == 200
                refused = await other.post("/completion", json={"prompt": [1], "n_predict": 1})
                assert refused.status_code == 401
            assert "LLAMA_API_KEY" not in " ".join(eng.command(1))  # not in ps's argv
        finally:
            await eng.stop()
        return process

    process = run(body())
    assert process.poll() is not None  # stopped with the engine


def test_llamacpp_engine_reports_a_failed_start(gguf, tmp_path) -> None:
    broken = tmp_path / "llama-server"
    broken.write_text("#!/bin/sh\necho 'error: unknown model format' >&2\nexit 3\n")
    broken.chmod(0o755)
    eng = LlamaCppEngine(gguf, binary=broken, parallel=1)
    with pytest.raises(ModelLoadError, match=r"exited with code 3:\nerror: unknown model format"):
        run(eng.start())
    with pytest.raises(ModelLoadError, match=r"needs a \.gguf file"):
        LlamaCppEngine(str(tmp_path), binary=broken)
