"""Engine pieces that need no model: the detokenizer, FakeEngine, names, loading errors."""

from __future__ import annotations

from typing import Any

import pytest
import tallystick.node.engines as engines
from tallystick.node.engines import (
    Detokenizer,
    EngineError,
    EngineStopped,
    FakeEngine,
    ModelLoadError,
    Prompt,
    PromptTooLong,
    SamplingParams,
    default_model_name,
    load_model,
)

from tests.kit.model import chat, run


def test_public_surface() -> None:
    assert sorted(engines.__all__) == sorted(set(engines.__all__))
    for name in engines.__all__:
        assert getattr(engines, name) is not None


@pytest.mark.parametrize(
    ("source", "name"),
    [
        (".models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct"),
        ("/m/Llama-3.2-1B-Instruct-Q4_K_M.gguf", "Llama-3.2-1B-Instruct"),
        ("/m/qwen2.5-0.5b-instruct-fp16.gguf", "qwen2.5-0.5b-instruct"),
        ("/m/phi-2.IQ3_XS.gguf", "phi-2"),
        ("/models/SmolLM2-135M-Instruct/", "SmolLM2-135M-Instruct"),
        ("HuggingFaceTB/SmolLM2-360M-Instruct", "SmolLM2-360M-Instruct"),
    ],
)
def test_default_model_name_strips_the_quantisation(source: str, name: str) -> None:
    assert default_model_name(source) == name


def test_missing_model_path_is_a_clear_error(tmp_path: Any) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nope" / "model.gguf"))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=r"not a \.gguf file"):
        load_model(str(tmp_path / "weights.bin"))


def test_unreachable_hub_id_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    # The hub is unreachable from here anyway; offline mode just skips the network retries.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match="hub"):
        load_model("tallystick-test/no-such-model")


def test_sampling_params_are_validated() -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingParams(max_tokens=0)
    with pytest.raises(ValueError, match="at most 4 stop strings"):
        SamplingParams(max_tokens=1, stop=("a", "b", "c", "d", "e"))
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(max_tokens=1, top_p=0)


# --- Detokenizer on the tiny byte-level tokenizer ---


def pushes(counter: Any, ids: list[int], stop: tuple[str, ...] = ()) -> list[str]:
    detok = Detokenizer(counter.decode, stop)
    return [detok.push([i]) for i in ids] + [detok.flush()]


def test_deltas_hold_back_incomplete_utf8(tiny_counter: Any) -> None:
    ids = list("a€b".encode())  # byte ids: "€" is three bytes
    assert pushes(tiny_counter, ids) == ["a", "", "", "€", "b", ""]


def test_deltas_hold_back_a_possible_stop_string_then_release_it(tiny_counter: Any) -> None:
    ids = list(b"x<ey")
    assert pushes(tiny_counter, ids, stop=("<end>",)) == ["x", "", "", "<ey", ""]


def test_stop_string_cuts_the_text(tiny_counter: Any) -> None:
    detok = Detokenizer(tiny_counter.decode, ("<end>",))
    out = [detok.push([i]) for i in b"ok<end>more"[:7]]
    assert "".join(out) == "ok"
    assert detok.stopped
    assert detok.flush() == ""


def test_flush_sends_a_trailing_incomplete_char_as_decoded(tiny_counter: Any) -> None:
    detok = Detokenizer(tiny_counter.decode)
    assert detok.push([ord("a"), 0xE2]) == "a"
    assert detok.flush() == tiny_counter.decode([ord("a"), 0xE2])[1:]


# --- FakeEngine ---


async def fake_run(engine: FakeEngine, prompt: Prompt, params: SamplingParams) -> list[Any]:
    await engine.start()
    try:
        return [e async for e in engine.generate(prompt, params)]
    finally:
        await engine.stop()


def test_fake_engine_replays_its_reply_then_eos(tiny_counter: Any) -> None:
    engine = FakeEngine(reply="hello world")
    events = run(fake_run(engine, chat(engine.counter, "hi"), SamplingParams(50)))
    ids = [i for e in events for i in e.token_ids]
    assert ids == [*tiny_counter.text_prompt_ids("hello world"), *tiny_counter.eos_token_ids]
    assert "".join(e.text for e in events) == "hello world"
    assert events[-1].finish_reason == "stop"
    assert events[-1].timing is not None


def test_fake_engine_honours_max_tokens_and_stop_strings() -> None:
    engine = FakeEngine(reply="hello world, the quick brown fox")
    prompt = chat(engine.counter, "hi")
    events = run(fake_run(engine, prompt, SamplingParams(2)))
    assert (len(events), events[-1].finish_reason) == (2, "length")
    events = run(fake_run(engine, prompt, SamplingParams(50, stop=(", the",))))
    assert "".join(e.text for e in events) == "hello world"
    assert events[-1].finish_reason == "stop"


def test_a_special_id_ends_the_sequence(tiny_counter: Any) -> None:
    # A client pays a special id only as the last id (docs/protocol.md §6.2): an engine that
    # samples one mid-answer ends there instead of billing it in the middle.
    engine = FakeEngine(reply="hello<|endoftext|> world")
    events = run(fake_run(engine, chat(engine.counter, "hi"), SamplingParams(50)))
    ids = [i for e in events for i in e.token_ids]
    endoftext = tiny_counter.canonical_ids("<|endoftext|>")
    assert endoftext[0] in tiny_counter.special_token_ids
    assert ids == [*tiny_counter.canonical_ids("hello"), *endoftext]
    assert "".join(e.text for e in events) == "hello"
    assert events[-1].finish_reason == "stop"


def test_fake_engine_errors() -> None:
    engine = FakeEngine(context_length=5, fail_after=1)
    with pytest.raises(EngineStopped):
        engine.generate(Prompt(ids=[1]), SamplingParams(3))

    async def body() -> None:
        await engine.start()
        with pytest.raises(PromptTooLong):
            engine.generate(Prompt(ids=[1] * 5), SamplingParams(3))
        with pytest.raises(EngineError, match="fake engine failure"):
            async for _ in engine.generate(Prompt(ids=[1]), SamplingParams(3)):
                pass
        assert engine.stats() == {"queued": 0, "running": 0, "max_batch": 8}

    run(body())
