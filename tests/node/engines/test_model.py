"""TransformersEngine on the real SmolLM2-135M-Instruct GGUF."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from tallystick.node.engines import SamplingParams, TransformersEngine

from tests.kit.model import chat, run

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def smol(model_dir: Path, model_file: str) -> TransformersEngine:
    return TransformersEngine.load(str(model_dir / model_file), max_batch=4)


async def answer(engine: TransformersEngine, question: str, params: SamplingParams) -> Any:
    events = [e async for e in engine.generate(chat(engine.counter, question), params)]
    return [i for e in events for i in e.token_ids], "".join(e.text for e in events), events


def test_loads_the_gguf_with_its_name_and_tokenizer(smol: TransformersEngine) -> None:
    assert smol.model_name == "SmolLM2-135M-Instruct"
    assert smol.context_length == 8192
    assert smol.tokenizer_bundle.eos_token == "<|im_end|>"
    assert "<|im_start|>" in smol.tokenizer_bundle.chat_template


def test_greedy_answer_is_sensible_and_batching_changes_nothing(smol: TransformersEngine) -> None:
    greedy = SamplingParams(max_tokens=12, temperature=0.0)
    questions = ["What is the capital of France?", "Name a red fruit.", "Say hello."]

    async def body() -> tuple[list[Any], list[Any]]:
        await smol.start()
        alone = [await answer(smol, q, greedy) for q in questions]
        together = await asyncio.gather(*(answer(smol, q, greedy) for q in questions))
        await smol.stop()
        return alone, list(together)

    alone, together = run(body())
    ids, text, _ = alone[0]
    assert "Paris" in text
    assert text == smol.counter.decode(ids)
    assert [t[0] for t in together] == [a[0] for a in alone]
    assert [t[1] for t in together] == [a[1] for a in alone]
