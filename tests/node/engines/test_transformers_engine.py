"""TransformersEngine on a tiny random Llama: batching, sampling, stops, EOS, cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from tallystick.node.engines import (
    EngineOverloaded,
    EngineStopped,
    Prompt,
    PromptTooLong,
    SamplingParams,
    TokenEvent,
    TransformersEngine,
)
from tallystick.node.engines._loading import LoadedModel

from tests.kit.model import chat, run, with_eos

GREEDY = SamplingParams(max_tokens=16, temperature=0.0)
QUESTIONS = ("hello", "what is the capital of France?", "a", "the quick brown fox jumps over it")


async def collect(engine: Any, prompt: Prompt, params: SamplingParams) -> list[TokenEvent]:
    return [event async for event in engine.generate(prompt, params)]


def ids_of(events: Sequence[TokenEvent]) -> list[int]:
    return [i for e in events for i in e.token_ids]


def text_of(events: Sequence[TokenEvent]) -> str:
    return "".join(e.text for e in events)


async def started(loaded: LoadedModel, **kwargs: Any) -> TransformersEngine:
    # One torch thread: the tiny model's ops are too small to split, and on a busy 2-core
    # machine a second spinning thread makes every step several times slower.
    engine = TransformersEngine(loaded, num_threads=1, **kwargs)
    await engine.start()
    return engine


def test_concurrent_greedy_equals_alone(tiny_model: LoadedModel) -> None:
    async def body() -> tuple[list[list[int]], list[list[int]]]:
        engine = await started(tiny_model, max_batch=4)
        prompts = [chat(engine.counter, q) for q in QUESTIONS]
        alone = [ids_of(await collect(engine, p, GREEDY)) for p in prompts]
        together = await asyncio.gather(*(collect(engine, p, GREEDY) for p in prompts))
        await engine.stop()
        return alone, [ids_of(events) for events in together]

    alone, together = run(body())
    assert together == alone
    assert all(len(ids) == GREEDY.max_tokens for ids in alone)
    assert len({tuple(ids) for ids in alone}) > 1  # the prompts really lead to different outputs


def test_requests_joining_a_running_batch_match_alone(tiny_model: LoadedModel) -> None:
    """Continuous batching: late requests prefill and join mid-flight, and leave early."""
    long = SamplingParams(max_tokens=24, temperature=0.0)
    short = SamplingParams(max_tokens=5, temperature=0.0)

    async def body() -> tuple[list[list[int]], list[list[int]], int]:
        engine = await started(tiny_model, max_batch=3)
        prompts = [chat(engine.counter, q) for q in QUESTIONS]
        alone = [ids_of(await collect(engine, prompts[0], long))]
        alone += [ids_of(await collect(engine, p, short)) for p in prompts[1:]]
        first: list[TokenEvent] = []
        late: list[asyncio.Task[list[TokenEvent]]] = []
        busiest = 0
        async for event in engine.generate(prompts[0], long):
            first.append(event)
            busiest = max(busiest, engine.stats()["running"])
            if len(first) in (2, 5, 8):  # join at different step boundaries
                late.append(asyncio.create_task(collect(engine, prompts[len(late) + 1], short)))
        mixed = [ids_of(first), *(ids_of(events) for events in await asyncio.gather(*late))]
        await engine.stop()
        return alone, mixed, busiest

    alone, mixed, busiest = run(body())
    assert mixed == alone
    assert busiest >= 2  # the late requests really shared steps with the first one


def test_seeded_request_is_reproducible_regardless_of_batch_mates(tiny_model: LoadedModel) -> None:
    sampled = SamplingParams(max_tokens=12, temperature=1.0, top_p=0.9, seed=1234)

    async def body() -> tuple[list[int], list[int], list[int]]:
        engine = await started(tiny_model)
        prompt = chat(engine.counter, "hello")
        alone = ids_of(await collect(engine, prompt, sampled))
        mates = [collect(engine, chat(engine.counter, q), SamplingParams(12)) for q in QUESTIONS]
        with_mates = await asyncio.gather(collect(engine, prompt, sampled), *mates)
        other_seed = SamplingParams(max_tokens=12, temperature=1.0, top_p=0.9, seed=99)
        other = ids_of(await collect(engine, prompt, other_seed))
        await engine.stop()
        return alone, ids_of(with_mates[0]), other

    alone, with_mates, other = run(body())
    assert with_mates == alone
    assert other != alone


def test_max_tokens_ends_with_length(tiny_model: LoadedModel) -> None:
    async def body() -> list[TokenEvent]:
        engine = await started(tiny_model)
        events = await collect(engine, chat(engine.counter, "hello"), SamplingParams(7, 0.0))
        await engine.stop()
        return events

    events = run(body())
    assert len(ids_of(events)) == 7
    assert all(len(e.token_ids) == 1 for e in events)
    assert [e.finish_reason for e in events] == [None] * 6 + ["length"]


def test_generation_stops_when_the_context_is_full(tiny_model: LoadedModel) -> None:
    async def body() -> tuple[int, list[TokenEvent]]:
        engine = await started(tiny_model, context_length=40)
        prompt = chat(engine.counter, "hello")
        events = await collect(engine, prompt, SamplingParams(100, 0.0))
        await engine.stop()
        return len(prompt.ids), events

    prompt_len, events = run(body())
    assert prompt_len + len(ids_of(events)) == 40
    assert events[-1].finish_reason == "length"


def test_text_always_equals_decode_of_ids(tiny_model: LoadedModel) -> None:
    async def body() -> tuple[Callable[[list[int]], str], list[list[TokenEvent]]]:
        engine = await started(tiny_model)
        params = [SamplingParams(40, temperature=1.2, seed=s) for s in range(6)]
        runs = await asyncio.gather(
            *(collect(engine, chat(engine.counter, "hi"), p) for p in params)
        )
        await engine.stop()
        return engine.counter.decode, list(runs)

    decode, runs = run(body())
    for events in runs:
        for n in range(1, len(events) + 1):
            assert decode(ids_of(events[:n])).startswith(text_of(events[:n]))
        assert text_of(events) == decode(ids_of(events))


def test_eos_is_counted_and_adds_no_text(bigram_model: Any, tiny_counter: Any) -> None:
    async def body() -> tuple[list[int], list[TokenEvent]]:
        counter = tiny_counter
        prompt = chat(counter, "hi")
        eos = counter.eos_token_ids[0]
        script = [*counter.text_prompt_ids("hello world"), eos]
        engine = await started(bigram_model(script, prompt.ids[-1]))
        events = await collect(engine, prompt, SamplingParams(50, 0.0))
        await engine.stop()
        return script, events

    script, events = run(body())
    assert ids_of(events) == script
    assert text_of(events) == "hello world"
    assert events[-1] == TokenEvent([script[-1]], "", "stop", events[-1].timing)


def test_any_model_eos_id_stops(bigram_model: Any, tiny_counter: Any) -> None:
    """Ids listed as EOS by the model's generation config stop like the tokenizer's EOS."""

    async def body() -> list[TokenEvent]:
        counter = tiny_counter
        prompt = chat(counter, "hi")
        endoftext = counter.text_prompt_ids("<|endoftext|>")[0]
        script = [*counter.text_prompt_ids("hello"), endoftext, 65, 66]
        loaded = with_eos(bigram_model(script, prompt.ids[-1]), endoftext)
        engine = await started(loaded)
        events = await collect(engine, prompt, SamplingParams(50, 0.0))
        await engine.stop()
        return events

    events = run(body())
    assert text_of(events) == "hello"
    assert events[-1].finish_reason == "stop"
    assert len(ids_of(events)) == 2


@pytest.mark.parametrize(
    ("stop", "text"),
    [
        ((", the",), "hello world"),
        (("brown", "quick"), "hello world, the "),  # the earliest match wins
        (("fox",), "hello world, the quick brown "),
        (("zebra",), "hello world, the quick brown fox"),
    ],
)
def test_stop_strings_cut_the_text_and_are_never_sent(
    bigram_model: Any, tiny_counter: Any, stop: tuple[str, ...], text: str
) -> None:
    async def body() -> tuple[list[int], list[TokenEvent]]:
        counter = tiny_counter
        prompt = chat(counter, "hi")
        script = [*counter.text_prompt_ids("hello world, the quick brown fox"), 0]
        engine = await started(bigram_model(script, prompt.ids[-1]))
        events = await collect(engine, prompt, SamplingParams(len(script) - 1, 0.0, stop=stop))
        await engine.stop()
        return script, events

    script, events = run(body())
    assert text_of(events) == text
    if stop == ("zebra",):
        assert events[-1].finish_reason == "length"
        assert ids_of(events) == script[:-1]
        return
    assert events[-1].finish_reason == "stop"
    # The ids run up to the one that completed the (earliest) stop string, and no further.
    ids = ids_of(events)
    decoded = tiny_counter.decode(ids)
    assert min(decoded.find(s) for s in stop if s in decoded) == len(text)
    assert not any(s in tiny_counter.decode(ids[:-1]) for s in stop)


def test_incomplete_utf8_is_held_back(bigram_model: Any, tiny_counter: Any) -> None:
    async def body() -> list[TokenEvent]:
        prompt = chat(tiny_counter, "hi")
        script = list("é日".encode())  # byte tokens 0-255 are the tiny tokenizer's first ids
        engine = await started(bigram_model([*script, 0], prompt.ids[-1]))
        events = await collect(engine, prompt, SamplingParams(len(script), 0.0))
        await engine.stop()
        return events

    events = run(body())
    assert [e.text for e in events] == ["", "é", "", "", "日"]
    assert [e.token_ids for e in events] == [[b] for b in "é日".encode()]


def test_closing_the_stream_frees_the_slot(tiny_model: LoadedModel) -> None:
    async def body() -> tuple[dict[str, int], list[TokenEvent]]:
        engine = await started(tiny_model, max_batch=1)
        prompt = chat(engine.counter, "hello")
        stream = engine.generate(prompt, SamplingParams(200, 0.0))
        await anext(stream)
        await anext(stream)
        await stream.aclose()
        # With one slot, this can only run once the abandoned sequence has left the batch.
        events = await asyncio.wait_for(collect(engine, prompt, SamplingParams(3, 0.0)), 10)
        stats = engine.stats()
        await engine.stop()
        return stats, events

    stats, events = run(body())
    assert len(ids_of(events)) == 3
    assert stats == {"queued": 0, "running": 0, "max_batch": 1}


def test_full_queue_rejects_new_requests(tiny_model: LoadedModel) -> None:
    async def body() -> dict[str, int]:
        engine = await started(tiny_model, max_batch=1, max_queue=1)
        prompt = chat(engine.counter, "hello")
        running = engine.generate(prompt, SamplingParams(200, 0.0))
        waiting = engine.generate(prompt, SamplingParams(200, 0.0))
        await anext(running)
        pending = asyncio.create_task(anext(waiting))
        while engine.stats()["queued"] == 0:
            await asyncio.sleep(0.001)
        stats = engine.stats()
        with pytest.raises(EngineOverloaded):
            engine.generate(prompt, SamplingParams(1))
        pending.cancel()
        await running.aclose()
        await engine.stop()
        return stats

    assert run(body()) == {"queued": 1, "running": 1, "max_batch": 1}


def test_prompt_filling_the_context_is_rejected(tiny_model: LoadedModel) -> None:
    async def body() -> None:
        engine = await started(tiny_model, context_length=10)
        with pytest.raises(PromptTooLong) as info:
            engine.generate(Prompt(ids=list(range(10))), GREEDY)
        assert (info.value.prompt_tokens, info.value.context_length) == (10, 10)
        await engine.stop()

    run(body())


def test_generate_before_start_raises_engine_stopped(tiny_model: LoadedModel) -> None:
    engine = TransformersEngine(tiny_model)
    with pytest.raises(EngineStopped):
        engine.generate(Prompt(ids=[1, 2]), GREEDY)


def test_stop_fails_waiting_streams(tiny_model: LoadedModel) -> None:
    async def body() -> None:
        engine = await started(tiny_model)
        stream = engine.generate(chat(engine.counter, "hello"), SamplingParams(10_000, 0.0))
        await anext(stream)
        await engine.stop()
        with pytest.raises(EngineStopped):
            async for _ in stream:
                pass

    run(body())


def test_final_event_carries_timing(tiny_model: LoadedModel) -> None:
    async def body() -> list[TokenEvent]:
        engine = await started(tiny_model)
        events = await collect(engine, chat(engine.counter, "hello"), SamplingParams(5, 0.0))
        await engine.stop()
        return events

    events = run(body())
    timing = events[-1].timing
    assert all(e.timing is None for e in events[:-1])
    assert timing is not None
    assert 0 <= timing.queued_s <= timing.ttft_s
    assert len(timing.inter_token_s) == 4
    assert all(gap > 0 for gap in timing.inter_token_s)


def test_engine_exposes_model_metadata(tiny_model: LoadedModel, tiny_dir: Any) -> None:
    from tallystick.node.engines import TINY_CHAT_TEMPLATE

    engine = TransformersEngine(tiny_model)
    assert engine.model_name == tiny_dir.name
    assert engine.context_length == 256
    assert engine.tokenizer_bundle.chat_template == TINY_CHAT_TEMPLATE
    assert engine.tokenizer_bundle.eos_token == "<|im_end|>"
    named = TransformersEngine(tiny_model, model_name="tiny", context_length=128)
    assert (named.model_name, named.context_length) == ("tiny", 128)


def test_default_threads_leave_a_core_and_follow_the_setting(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import os

    from tallystick.node.engines._transformers import default_threads

    monkeypatch.delenv("TALLYSTICK_THREADS", raising=False)
    assert default_threads() == max(1, (os.cpu_count() or 1) - 1)
    monkeypatch.setenv("TALLYSTICK_THREADS", "3")
    assert default_threads() == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("TALLYSTICK_THREADS", bad)
        assert default_threads() == max(1, (os.cpu_count() or 1) - 1)
        assert f"TALLYSTICK_THREADS={bad!r} is not a positive integer" in caplog.text


@pytest.mark.parametrize("threads", [1, 2])
def test_the_worker_runs_the_model_with_the_thread_count(
    tiny_model: LoadedModel, threads: int
) -> None:
    import torch

    seen: list[int] = []
    before = torch.get_num_threads()
    hook = tiny_model.model.register_forward_pre_hook(
        lambda *_: seen.append(torch.get_num_threads())
    )

    async def body() -> None:
        engine = TransformersEngine(tiny_model, num_threads=threads)
        await engine.start()
        await collect(engine, chat(engine.counter, "hi"), SamplingParams(2, 0.0))
        await engine.stop()

    try:
        torch.set_num_threads(3 - threads)  # the caller's setting must not leak in
        run(body())
    finally:
        hook.remove()
        torch.set_num_threads(before)
    assert seen and set(seen) == {threads}
