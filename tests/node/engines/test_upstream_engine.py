"""UpstreamEngine: metering with upstream token ids or re-tokenised text (MockTransport),
errors, and an integration run against a real ``transformers serve`` on the tiny model."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tallystick.node.engines import (
    Prompt,
    SamplingParams,
    TokenEvent,
    UpstreamEngine,
    UpstreamError,
    UpstreamUnavailable,
)

from tests.kit.model import chat, run
from tests.kit.net import free_port, wait_http


def sse(*chunks: dict[str, Any]) -> bytes:
    lines = [f"data: {json.dumps(c)}\n\n" for c in chunks]
    return ("".join(lines) + "data: [DONE]\n\n").encode()


def engine_with(handler: Any, tiny_dir: Path, **kwargs: Any) -> UpstreamEngine:
    """An engine whose upstream is ``handler`` for completions (it lists the model "tiny")."""

    def route(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": "tiny"}]})
        response: httpx.Response = handler(request)
        return response

    return UpstreamEngine.from_source(
        "http://upstream.test", str(tiny_dir), transport=httpx.MockTransport(route), **kwargs
    )


async def collect(engine: UpstreamEngine, prompt: Prompt, params: SamplingParams) -> list[Any]:
    await engine.start()
    try:
        return [e async for e in engine.generate(prompt, params)]
    finally:
        await engine.stop()


def ids_of(events: list[TokenEvent]) -> list[int]:
    return [i for e in events for i in e.token_ids]


def text_of(events: list[TokenEvent]) -> str:
    return "".join(e.text for e in events)


def test_uses_upstream_token_ids_when_returned(tiny_dir: Path, tiny_counter: Any) -> None:
    hello, world = tiny_counter.text_prompt_ids("hello world")
    eos = tiny_counter.eos_token_ids[0]
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/extras/tokenize":  # the llama_cpp.server probe: not this one
            return httpx.Response(404)
        seen.append(json.loads(request.content))
        body = sse(
            {"choices": [{"delta": {"content": "hello"}, "token_ids": [hello]}]},
            {"choices": [{"delta": {"content": " world"}, "token_ids": [world]}]},
            {"choices": [{"delta": {}, "token_ids": [eos], "finish_reason": "stop"}]},
        )
        return httpx.Response(200, content=body)

    engine = engine_with(handler, tiny_dir)
    events = run(collect(engine, chat(tiny_counter, "hi"), SamplingParams(10, seed=3)))
    assert ids_of(events) == [hello, world, eos]
    assert text_of(events) == "hello world"
    assert events[-1].finish_reason == "stop"
    assert events[-1].timing is not None
    assert seen[0]["return_token_ids"] is True
    assert seen[0]["messages"] == [{"role": "user", "content": "hi"}]
    assert (seen[0]["max_tokens"], seen[0]["seed"], seen[0]["model"]) == (10, 3, "tiny")


def test_retokenises_text_and_falls_back_when_token_ids_are_refused(
    tiny_dir: Path, tiny_counter: Any
) -> None:
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/extras/tokenize":  # the llama_cpp.server probe: not this one
            return httpx.Response(404)
        bodies.append(json.loads(request.content))
        if "return_token_ids" in bodies[-1]:
            return httpx.Response(422, json={"error": {"message": "unknown field"}})
        words = ["The", " quick", " brown", " fox"]
        chunks = [{"choices": [{"text": w}]} for w in words]
        chunks.append({"choices": [{"text": "", "finish_reason": "length"}]})
        return httpx.Response(200, content=sse(*chunks))

    engine = engine_with(handler, tiny_dir)
    prompt = Prompt(ids=tiny_counter.text_prompt_ids("Say:"), text="Say:")
    events = run(collect(engine, prompt, SamplingParams(20)))
    assert text_of(events) == "The quick brown fox"
    assert ids_of(events) == tiny_counter.text_prompt_ids("The quick brown fox")
    assert events[-1].finish_reason == "length"
    assert [("return_token_ids" in b) for b in bodies] == [True, False]
    assert bodies[-1]["prompt"] == "Say:"


def test_never_meters_past_max_tokens(tiny_dir: Path, tiny_counter: Any) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        ids = tiny_counter.text_prompt_ids("hello world the quick brown fox")
        chunks = [{"choices": [{"delta": {"content": "x"}, "token_ids": [i]}]} for i in ids]
        return httpx.Response(200, content=sse(*chunks))

    engine = engine_with(handler, tiny_dir)
    events = run(collect(engine, chat(tiny_counter, "hi"), SamplingParams(3)))
    assert len(ids_of(events)) == 3
    assert events[-1].finish_reason == "length"


def test_never_meters_past_a_special_id(tiny_dir: Path, tiny_counter: Any) -> None:
    # §6.2: a client pays a special id only as the last id, so the sequence ends at the first.
    hello, world = tiny_counter.text_prompt_ids("hello world")
    special = min(tiny_counter.special_token_ids)

    def handler(request: httpx.Request) -> httpx.Response:
        choice = {"delta": {"content": "hello world"}, "token_ids": [hello, special, world]}
        return httpx.Response(200, content=sse({"choices": [choice]}))

    engine = engine_with(handler, tiny_dir)
    events = run(collect(engine, chat(tiny_counter, "hi"), SamplingParams(10)))
    assert ids_of(events) == [hello, special]
    assert events[-1].finish_reason == "stop"


@pytest.mark.parametrize(
    ("chunks", "reason"),
    [
        ([], "stop"),  # only [DONE]
        ([{"choices": [{"delta": {"content": ""}, "finish_reason": "stop"}]}], "stop"),
        ([{"choices": [{"text": "", "finish_reason": "length"}]}], "length"),
        ([{"choices": [{"delta": {}, "token_ids": [], "finish_reason": None}]}], "stop"),
    ],
)
def test_empty_upstream_answer_ends_with_a_final_event_without_ids(
    tiny_dir: Path, tiny_counter: Any, chunks: list[dict[str, Any]], reason: str
) -> None:
    engine = engine_with(lambda _: httpx.Response(200, content=sse(*chunks)), tiny_dir)
    events = run(collect(engine, chat(tiny_counter, "hi"), SamplingParams(10)))
    assert len(events) == 1
    final = events[0]
    assert (final.token_ids, final.text, final.finish_reason) == ([], "", reason)
    assert final.timing is not None
    assert final.timing.inter_token_s == ()


def test_stop_strings_are_applied_locally(tiny_dir: Path, tiny_counter: Any) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert "stop" not in json.loads(request.content)
        words = ["hello", " world", ", the", " quick", " brown"]
        return httpx.Response(200, content=sse(*({"choices": [{"text": w}]} for w in words)))

    engine = engine_with(handler, tiny_dir)
    prompt = Prompt(ids=[1, 2], text="x")
    events = run(collect(engine, prompt, SamplingParams(20, stop=(", the",))))
    assert text_of(events) == "hello world"
    assert events[-1].finish_reason == "stop"
    assert ", the" in tiny_counter.decode(ids_of(events))


def test_warns_when_upstream_counts_the_prompt_differently(
    tiny_dir: Path, tiny_counter: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            content=sse(
                {"choices": [{"text": "hello", "finish_reason": "stop"}]},
                {"choices": [], "usage": {"prompt_tokens": 999, "completion_tokens": 1}},
            ),
        )

    engine = engine_with(handler, tiny_dir)
    with caplog.at_level(logging.WARNING, logger="tallystick.node.engines"):
        events = run(collect(engine, Prompt(ids=[5, 6, 7], text="abc"), SamplingParams(5)))
    assert text_of(events) == "hello"
    assert "counted 999 prompt tokens, the counting rule gives 3" in caplog.text


def test_upstream_error_status_is_translated(tiny_dir: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"error": {"message": "model is loading"}})

    engine = engine_with(handler, tiny_dir)
    with pytest.raises(UpstreamError) as info:
        run(collect(engine, Prompt(ids=[1], text="x"), SamplingParams(5)))
    assert (info.value.status, info.value.message) == (503, "model is loading")


def test_upstream_down_fails_start_clearly(tiny_dir: Path) -> None:
    port = free_port()
    engine = UpstreamEngine.from_source(f"http://127.0.0.1:{port}", str(tiny_dir))
    with pytest.raises(UpstreamUnavailable, match=f"127.0.0.1:{port}"):
        run(engine.start())


# --- integration: a real `transformers serve` on this machine ---


@pytest.fixture(scope="module")
def served(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    cache = tmp_path_factory.mktemp("hf-cache")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    cli = Path(sys.executable).with_name("transformers")
    cmd = [str(cli), "serve", str(tiny_dir), "--port", str(port), "--device", "cpu"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        what = "transformers serve"
        wait_http(f"{url}/health", proc, timeout=120, what=what, log=_exit_log(proc))
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def _exit_log(proc: subprocess.Popen[bytes]) -> Any:
    """The end of an exited process's stderr (nothing while it runs: a read would block)."""
    return lambda: proc.stderr.read().decode()[-2000:] if proc.poll() is not None else ""


def test_meters_a_real_transformers_serve(served: str, tiny_dir: Path, tiny_counter: Any) -> None:
    async def body() -> tuple[list[TokenEvent], list[TokenEvent]]:
        engine = UpstreamEngine.from_source(served, str(tiny_dir), upstream_model=str(tiny_dir))
        await engine.start()
        greedy = SamplingParams(max_tokens=12, temperature=0.0)
        chat_events = [e async for e in engine.generate(chat(tiny_counter, "hello"), greedy)]
        text = Prompt(ids=tiny_counter.text_prompt_ids("the quick"), text="the quick")
        text_events = [e async for e in engine.generate(text, greedy)]
        await engine.stop()
        return chat_events, text_events

    for events in run(body()):
        ids = ids_of(events)
        assert 1 <= len(ids) <= 12
        assert text_of(events) == tiny_counter.decode(ids)
        assert events[-1].finish_reason in ("length", "stop")
        assert all(e.token_ids for e in events)


def test_text_without_spaces_still_streams_and_is_metered_whole(
    tiny_dir: Path, tiny_counter: Any
) -> None:
    pieces = ["日本語のテキスト" * 2] * 5  # 80 characters (240 byte ids), no whitespace

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=sse(*({"choices": [{"text": p}]} for p in pieces)))

    engine = engine_with(handler, tiny_dir)
    events = run(collect(engine, Prompt(ids=[1], text="x"), SamplingParams(2000)))
    assert len(events) > 1  # streamed before the end
    assert text_of(events) == "".join(pieces) == tiny_counter.decode(ids_of(events))
