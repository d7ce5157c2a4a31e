"""The client's prompt count by cached pieces equals the protocol's whole-text count, id for id."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tallystick.client._counting import PromptCounter
from tallystick.node.engines import tiny_tokenizer_bundle
from tallystick.protocol import TokenCounter, TokenizerBundle

MODEL_DIR = Path(__file__).parents[2] / ".models" / "SmolLM2-135M-Instruct"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SPECIAL = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_", "|>"]

TEXT = st.lists(
    st.one_of(st.text(max_size=40), st.sampled_from([*SPECIAL, " ", "\n", "  x", "é🙂", "12345"])),
    max_size=6,
).map("".join)
MESSAGES = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant"]), "content": TEXT}
    ),
    min_size=1,
    max_size=5,
)


class Spy:
    """Records what reaches the tokenizer's batch encoder."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.encoded = inner, []

    def encode_batch_fast(self, texts: list[str], **kw: Any) -> Any:
        self.encoded.extend(texts)
        return self.inner.encode_batch_fast(texts, **kw)


@pytest.fixture(scope="module")
def tiny() -> PromptCounter:
    return PromptCounter(TokenCounter(tiny_tokenizer_bundle()))


@settings(max_examples=200, deadline=None)
@given(messages=MESSAGES)
def test_pieces_count_like_the_protocol(
    tiny: PromptCounter, messages: list[dict[str, str]]
) -> None:
    assert tiny.by_pieces
    assert tiny.chat_prompt_ids(messages) == tiny.counter.chat_prompt_ids(messages)


def test_a_conversation_encodes_only_its_new_text(tiny: PromptCounter) -> None:
    counter = PromptCounter(tiny.counter)
    counter.chat_prompt_ids([{"role": "user", "content": "warm up"}])  # the one-off check
    spy = Spy(counter._tokenizer)
    counter._tokenizer = spy  # type: ignore[assignment]
    history = [{"role": "user", "content": "a long question " * 50}]
    counter.chat_prompt_ids(history)
    assert any("a long question" in t for t in spy.encoded)
    spy.encoded.clear()
    history += [
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": "a follow-up"},
    ]
    ids = counter.chat_prompt_ids(history)
    assert ids == counter.counter.chat_prompt_ids(history)
    assert not any("a long question" in t for t in spy.encoded)  # from the cache
    assert any("a follow-up" in t for t in spy.encoded)


def test_the_cache_is_bounded(tiny: PromptCounter) -> None:
    counter = PromptCounter(tiny.counter, cache_pieces=8)
    for i in range(50):
        counter.chat_prompt_ids([{"role": "user", "content": f"message {i}"}])
    assert len(counter._pieces) <= 8


def _with(bundle: TokenizerBundle, **changes: Any) -> TokenizerBundle:
    spec = json.loads(bundle.tokenizer_json)
    spec.update(changes)
    return TokenizerBundle(
        json.dumps(spec), bundle.chat_template, bundle.bos_token, bundle.eos_token
    )


def test_tokenizers_that_do_not_split_cleanly_count_whole_prompts() -> None:
    bundle = tiny_tokenizer_bundle()
    lowercase = _with(bundle, normalizer={"type": "Lowercase"})
    stripped = json.loads(bundle.tokenizer_json)
    stripped["added_tokens"][1]["lstrip"] = True
    lstrip = _with(bundle, added_tokens=stripped["added_tokens"])
    for variant in (lowercase, lstrip):
        counter = PromptCounter(TokenCounter(variant))
        assert not counter.by_pieces
        messages = [{"role": "user", "content": "Hi  <|im_end|> there"}]
        assert counter.chat_prompt_ids(messages) == counter.counter.chat_prompt_ids(messages)


def test_a_bundle_whose_first_prompt_differs_falls_back(tiny: PromptCounter) -> None:
    import re

    counter = PromptCounter(tiny.counter)
    # A wrong cut: "o" is not an added token of this tokenizer.
    counter._split, counter._added = re.compile("(o)"), {"o": 5}
    messages = [{"role": "user", "content": "two words"}]
    assert counter.chat_prompt_ids(messages) == counter.counter.chat_prompt_ids(messages)
    assert not counter.by_pieces


@pytest.mark.model
@settings(max_examples=200, deadline=None)
@given(messages=MESSAGES)
def test_pieces_count_like_the_protocol_with_the_real_tokenizer(
    messages: list[dict[str, str]],
) -> None:
    counter = _real()
    assert counter.by_pieces
    assert counter.chat_prompt_ids(messages) == counter.counter.chat_prompt_ids(messages)


_REAL: list[PromptCounter] = []


def _real() -> PromptCounter:
    if not _REAL:
        from transformers import AutoTokenizer

        if not (MODEL_DIR / MODEL_FILE).exists():
            pytest.skip("model not found: run `make model`")
        tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR, gguf_file=MODEL_FILE)
        bundle = TokenizerBundle.from_hf(tokenizer)
        _REAL.append(PromptCounter(TokenCounter(bundle)))
    return _REAL[0]
