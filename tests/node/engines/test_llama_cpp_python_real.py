"""``UpstreamEngine`` in front of a real ``llama_cpp.server`` (llama-cpp-python's server, on the
``libllama.so`` ``make llama`` builds once for it and for ``llama-server``) serving the real
SmolLM2 GGUF: found by its ``/extras/tokenize``, the metered prompt sent as text and read back
as exactly the billed ids, the completion metered by re-tokenising its text (the counting
rule), stop strings, concurrency, an interrupted stream and a foreign tokenizer refused."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tallystick.node.engines import (
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

N_CTX = 1024


@pytest.fixture(scope="module")
def gguf(model_dir: Path, model_file: str) -> str:
    return str(model_dir / model_file)


@contextlib.contextmanager
def _serve(
    command: Callable[..., tuple[list[str], dict[str, str]]],
    gguf: str,
    log: Path,
    interrupt: bool = False,
) -> Iterator[str]:
    port = free_port()
    cmd, env = command(gguf, port, n_ctx=N_CTX, threads=1)
    if interrupt:  # the server's own default: a new request cuts the running stream
        at = cmd.index("--interrupt_requests")
        cmd[at + 1] = "True"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(
            f"{url}/v1/models",
            proc,
            timeout=120,
            what="llama_cpp.server",
            log=lambda: log.read_text()[-3000:],
        )
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(
    llama_cpp_python: Any, gguf: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A bare llama_cpp.server as a provider runs it (one request at a time)."""
    log = tmp_path_factory.mktemp("llama-py") / "server.log"
    with _serve(llama_cpp_python, gguf, log) as url:
        yield url


@pytest.fixture(scope="module")
def engine(server: str, gguf: str) -> UpstreamEngine:
    """Not started: each test's event loop starts and stops it."""
    return UpstreamEngine.from_source(server, gguf)


def _collect(engine: Any, prompt: Prompt, params: SamplingParams) -> tuple[list[int], str, Any]:
    return run(_started(engine, lambda: _gen(engine, prompt, params)))


def _reference(url: str, engine: Any, prompt: Prompt, n: int) -> dict[str, Any]:
    """llama_cpp.server's own greedy answer to the same prompt text (not streamed)."""
    text = engine._encoder.decode(prompt.ids, skip_special_tokens=False)
    body = {"prompt": text, "max_tokens": n, "temperature": 0, "top_k": 0, "min_p": 0}
    body |= {"repeat_penalty": 1.0}
    return httpx.post(f"{url}/v1/completions", json=body, timeout=120).json()


def test_found_at_start_and_reads_the_billed_prompt_ids(engine, server) -> None:
    prompt = chat(engine.counter, "Write a short poem about the sea.")
    ids, text, finish = _collect(engine, prompt, SamplingParams(max_tokens=24, temperature=0))
    assert engine.llama_cpp_python and engine.llamacpp is None
    # The prompt text it is sent is tokenised back into exactly the billed ids.
    sent = engine._encoder.decode(prompt.ids, skip_special_tokens=False)
    theirs = httpx.post(f"{server}/extras/tokenize", json={"input": sent}, timeout=30).json()
    assert theirs["tokens"] == prompt.ids
    reference = _reference(server, engine, prompt, 24)
    assert reference["usage"]["prompt_tokens"] == len(prompt.ids)
    assert text == reference["choices"][0]["text"]  # what llama.cpp generated, greedy
    assert finish == "length"
    # Re-tokenised by the counting rule: the billed ids decode to the text.
    assert ids == engine._encode_special(text) and engine.counter.decode(ids) == text
    assert abs(len(ids) - reference["usage"]["completion_tokens"]) <= 1


def test_an_end_of_sequence_ends_with_stop(engine, server) -> None:
    prompt = chat(engine.counter, "What is the capital of France? Answer in one word.")
    ids, text, finish = _collect(engine, prompt, SamplingParams(max_tokens=64, temperature=0))
    reference = _reference(server, engine, prompt, 64)
    assert reference["choices"][0]["finish_reason"] == "stop"
    assert finish == "stop" and "Paris" in text and text == reference["choices"][0]["text"]
    # It reports no ids: the EOS it generated is not billed (the node bills what it sees).
    assert engine.counter.decode(ids) == text and not set(ids) & set(engine.counter.eos_token_ids)


def test_stop_string_is_applied_by_the_node(engine) -> None:
    prompt = chat(engine.counter, "Count from 1 to 10, separated by commas.")
    params = SamplingParams(max_tokens=40, temperature=0, stop=(",",))
    ids, text, finish = _collect(engine, prompt, params)
    assert finish == "stop" and "," not in text
    assert engine.counter.decode(ids).startswith(text + ",")


def test_text_completion(engine) -> None:
    text = "The quick brown fox"
    ids = engine.counter.text_prompt_ids(text)
    out, got, finish = _collect(
        engine, Prompt(ids=ids, text=text), SamplingParams(max_tokens=8, temperature=0)
    )
    assert finish == "length" and out and engine.counter.decode(out) == got


def test_concurrent_streams_wait_their_turn(engine) -> None:
    async def many() -> list[tuple[list[int], str, Any]]:
        prompts = [chat(engine.counter, f"Say something about the number {i}.") for i in range(3)]
        params = SamplingParams(max_tokens=12, temperature=0)
        return await _started(
            engine, lambda: asyncio.gather(*(_gen(engine, p, params) for p in prompts))
        )

    for ids, text, finish in run(many()):
        assert finish == "length" and ids and engine.counter.decode(ids) == text


def test_closing_a_stream_lets_the_next_request_run(engine) -> None:
    async def abandon_then_ask() -> tuple[int, float, Any]:
        got = 0
        stream = engine.generate(
            chat(engine.counter, "Tell me a long story about a dragon."),
            SamplingParams(max_tokens=900, temperature=0),
        )
        async for event in stream:
            got += len(event.token_ids)
            if got >= 3:
                break
        await stream.aclose()
        started = time.monotonic()
        _, _, finish = await _gen(engine, chat(engine.counter, "Hi"), SamplingParams(max_tokens=4))
        return got, time.monotonic() - started, finish

    got, waited, finish = run(_started(engine, abandon_then_ask))
    # Not after the abandoned 900 ids (~10 s here even when quiet): the server stopped them.
    assert got >= 3 and finish == "length" and waited < 8


def test_an_interrupted_stream_is_an_error_naming_the_flag(
    llama_cpp_python, gguf, tmp_path
) -> None:
    with _serve(llama_cpp_python, gguf, tmp_path / "server.log", interrupt=True) as url:
        engine = UpstreamEngine.from_source(url, gguf)

        async def two() -> list[Any]:
            first = _gen(
                engine,
                chat(engine.counter, "Tell me a long story."),
                SamplingParams(max_tokens=300),
            )
            task = asyncio.ensure_future(first)
            await asyncio.sleep(1.0)  # the first one is streaming
            second = _gen(engine, chat(engine.counter, "Hi"), SamplingParams(max_tokens=4))
            return await asyncio.gather(task, second, return_exceptions=True)

        first, second = run(_started(engine, two))
        assert isinstance(first, UpstreamError) and "--interrupt_requests False" in str(first)
        assert not isinstance(second, BaseException) and second[2] == "length"


def test_another_tokenizer_is_refused_at_start(server) -> None:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    bundle = tiny_tokenizer_bundle()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(bundle.tokenizer_json), eos_token=bundle.eos_token
    )
    tokenizer.chat_template = bundle.chat_template
    other = UpstreamEngine(server, tokenizer, model_name="tiny", context_length=256)
    with pytest.raises(UpstreamError, match="reads the node's prompt text as other ids"):
        run(other.start())
