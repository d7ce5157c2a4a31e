"""Prefix reuse in the TransformersEngine: the cache's rules, and on the real SmolLM2 a
multi-turn chat whose later turns reuse the earlier turns' KV and answer exactly as without."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from tallystick.node.engines import Prompt, SamplingParams
from tallystick.node.engines._prefix import PrefixCache

from tests.kit.model import run


def _kv(n: int, layers: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.full((1, 1, n, 2), float(i)), torch.zeros(1, 1, n, 2)) for i in range(layers)]


def test_longest_prefix_in_the_same_scope_only() -> None:
    cache = PrefixCache(max_bytes=10**6, min_tokens=3)
    cache.put("a", [1, 2, 3, 4, 5], _kv(5))
    cache.put("a", [1, 2, 9, 9], _kv(4))
    hit = cache.match("a", [1, 2, 3, 4, 7, 8])
    assert hit is not None and hit.length == 4
    assert all(k.shape[2] == 4 and v.shape[2] == 4 for k, v in hit.layers)
    assert cache.match("b", [1, 2, 3, 4, 7, 8]) is None  # another channel's prompts: never
    assert cache.match("a", [1, 2, 7]) is None  # shorter than min_tokens in common
    assert (cache.hits, cache.reused_tokens) == (1, 4)


def test_one_id_is_always_left_to_compute() -> None:
    cache = PrefixCache(max_bytes=10**6, min_tokens=2)
    cache.put("a", [1, 2, 3, 4], _kv(4))
    hit = cache.match("a", [1, 2, 3, 4])
    assert hit is not None and hit.length == 3  # the model must still give the next logits


def test_an_extending_entry_replaces_its_prefix_and_lru_bounds_bytes() -> None:
    one = sum(k.nbytes + v.nbytes for k, v in _kv(4))
    cache = PrefixCache(max_bytes=2 * one, min_tokens=2)
    cache.put("a", [1, 2, 3], _kv(3))
    cache.put("a", [1, 2, 3, 4], _kv(4))
    assert len(cache) == 1  # the turn-1 entry is superseded by turn 2's
    cache.put("b", [5, 6, 7, 8], _kv(4))
    assert len(cache) == 2 and cache.nbytes == 2 * one
    cache.put("c", [9, 9, 9, 9], _kv(4))
    assert len(cache) == 2 and cache.match("a", [1, 2, 3, 4, 5]) is None  # oldest evicted
    cache.put("d", [1, 2], _kv(2))
    assert cache.match("d", [1, 2, 3]) is not None
    PrefixCache(max_bytes=0).put("a", [1] * 100, _kv(100))  # disabled: keeps nothing


SYSTEM = "You are the archivist of a seaside town, kind and brief. " * 12


async def _chat(engine: Any, scope: Any, turns: int) -> list[list[int]]:
    messages = [{"role": "system", "content": SYSTEM}]
    answers = []
    for turn in range(turns):
        messages.append({"role": "user", "content": f"What happens at {turn + 6} o'clock?"})
        prompt = Prompt(
            ids=engine.counter.chat_prompt_ids(messages), messages=messages, cache_scope=scope
        )
        ids: list[int] = []
        async for event in engine.generate(prompt, SamplingParams(max_tokens=8, temperature=0)):
            ids += event.token_ids
        answers.append(ids)
        messages.append({"role": "assistant", "content": engine.counter.decode(ids)})
    return answers


@pytest.mark.model
def test_later_turns_reuse_the_kv_and_answer_as_without(model_dir: Path, model_file: str) -> None:
    from tallystick.node.engines import TransformersEngine

    async def both() -> tuple[list[list[int]], list[list[int]], Any, list[list[int]]]:
        engine = TransformersEngine.load(str(model_dir / model_file), max_batch=2)
        plain = TransformersEngine.load(str(model_dir / model_file), prefix_cache_bytes=0)
        await engine.start()
        await plain.start()
        try:
            cached = await _chat(engine, b"channel-1", 3)
            hits_after_own = engine.prefix_cache.hits
            other = await _chat(engine, b"channel-2", 1)  # another channel: no reuse
            assert engine.prefix_cache.hits == hits_after_own
            return cached, await _chat(plain, b"channel-1", 3), engine.prefix_cache, other
        finally:
            await engine.stop()
            await plain.stop()

    cached, uncached, cache, other = run(both())
    assert cached == uncached  # the same greedy answers with the reused prefix
    assert other[0] == cached[0]
    assert cache.hits == 2  # turns 2 and 3 each reused the previous turn's KV
    assert cache.reused_tokens > 2 * 100  # at least the system prompt, twice
