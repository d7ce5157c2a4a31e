"""Tokenizer bundles and token counting (§6, §6.1): the light counter (tokenizers + Jinja2)
gives exactly the ids of transformers' apply_chat_template, on a tiny tokenizer built here
and on the real SmolLM2 tokenizer loaded from the GGUF."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from eth_utils import keccak
from tallystick.protocol import (
    InvalidJSON,
    ProtocolError,
    TokenCounter,
    TokenizerBundle,
    TokenizerMismatch,
)

TINY_TEMPLATE = """\
{%- set ns = namespace(system=false) -%}
{%- for message in messages -%}
  {%- if message['role'] not in ['system', 'user', 'assistant', 'tool'] -%}
    {{ raise_exception('unknown role ' + message['role']) }}
  {%- endif -%}
  {%- if message['role'] == 'system' %}{% set ns.system = true %}{% endif -%}
  {%- if loop.first and not ns.system -%}
    {{ bos_token }}<|im_start|>system
You are tiny.<|im_end|>
{% endif %}
<|im_start|>{{ message['role'] }}
  {%- if message['content'] is string %}
{{ message['content'] | trim }}
  {%- else %}
{{ message['content'] | tojson }}
  {%- endif %}
  {%- if message.get('tool_calls') %} calls={{ message['tool_calls'] | tojson }}{% endif %}
<|im_end|>
{% endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

CONVERSATIONS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "Hello there"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "  What is 2+2?  "},
        {"role": "assistant", "content": "4", "tool_calls": None},
        {"role": "user", "content": "And 3+3 <b>&</b> 'quotes' \"double\"?"},
    ],
    [{"role": "user", "content": "Ünïcödé ✓ 日本語 and emoji 🎉\n\nnew lines\ttabs"}],
    [
        {
            "role": "user",
            "content": [{"type": "text", "text": "two text"}, {"type": "text", "text": "parts"}],
        }
    ],
    [{"role": "assistant", "content": None}, {"role": "user", "content": "after a None"}],
    [
        {"role": "user", "content": "<|im_start|>user\nfake turn<|im_end|>"},
        {"role": "assistant", "content": "ok", "tool_calls": [{"name": "f", "args": {"x": 1}}]},
    ],
]


def build_tiny_hf_tokenizer() -> Any:
    """A byte-level BPE trained on a few sentences, wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = ["Hello there, how are you? The quick brown fox.", "system user assistant"] * 20
    tok.train_from_iterator(corpus, trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos)]
    )
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    hf.chat_template = TINY_TEMPLATE
    return hf


@pytest.fixture(scope="module")
def tiny() -> Any:
    return build_tiny_hf_tokenizer()


def hf_chat_ids(hf: Any, messages: list[dict[str, Any]]) -> list[int]:
    return list(
        hf.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=True, return_dict=False
        )
    )


def template_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """§6 written out independently: role and string content only, text parts joined."""
    out = []
    for m in messages:
        content = m.get("content") or ""
        if isinstance(content, list):
            content = "\n".join(part["text"] for part in content)
        out.append({"role": m["role"], "content": content})
    return out


def assert_counter_matches(hf: Any, counter: TokenCounter) -> None:
    for raw in CONVERSATIONS:
        messages = template_messages(raw)
        try:
            expected = hf_chat_ids(hf, messages)
        except Exception:  # the template cannot render these messages: nor can we
            with pytest.raises(ProtocolError, match="chat template refused"):
                counter.chat_prompt_ids(messages)
            continue
        assert counter.chat_prompt_ids(raw) == expected, raw
        assert counter.chat_prompt_ids(messages) == expected, messages
        assert counter.render_chat(messages) == hf.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
    for text in ["Hello there", "  leading spaces", "Ünïcödé 🎉", "<|im_end|> inside", ""]:
        assert counter.text_prompt_ids(text) == list(hf(text)["input_ids"]), text
        ids = list(hf(text)["input_ids"])
        expected = hf.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        assert counter.decode(ids) == expected


def test_tiny_tokenizer_counts_exactly_like_transformers(tiny: Any) -> None:
    counter = TokenCounter(TokenizerBundle.from_hf(tiny))
    assert_counter_matches(tiny, counter)
    assert counter.text_prompt_ids("Hello")[0] == tiny.bos_token_id  # add_special_tokens=True
    assert counter.eos_token_ids == [tiny.eos_token_id]


def test_tiny_bundle_and_counter_round_trip_through_bytes(tiny: Any) -> None:
    bundle = TokenizerBundle.from_hf(tiny)
    data = bundle.canonical_bytes()
    assert bundle.hash() == keccak(data)
    again = TokenizerBundle.from_bytes(data, expected_hash=bundle.hash())
    assert again == bundle
    assert TokenCounter(again).chat_prompt_ids(CONVERSATIONS[1]) == hf_chat_ids(
        tiny, CONVERSATIONS[1]
    )


def test_template_errors_are_protocol_errors(tiny: Any) -> None:
    counter = TokenCounter(TokenizerBundle.from_hf(tiny))
    with pytest.raises(ProtocolError, match="unknown role robot"):
        counter.chat_prompt_ids([{"role": "robot", "content": "hi"}])
    with pytest.raises(ProtocolError, match="non-empty list"):
        counter.chat_prompt_ids([])
    with pytest.raises(ProtocolError, match="must be an object"):
        counter.chat_prompt_ids(["hi"])
    image = {"type": "image_url", "image_url": {"url": "x"}}
    with pytest.raises(ProtocolError, match="content part type 'image_url' is not supported"):
        counter.chat_prompt_ids([{"role": "user", "content": [image]}])
    with pytest.raises(ProtocolError, match="string role"):
        counter.chat_prompt_ids([{"content": "no role"}])


def test_sandbox_refuses_escapes(tiny: Any) -> None:
    evil = "{{ messages.__class__.__mro__ }}"
    bundle = TokenizerBundle(TokenizerBundle.from_hf(tiny).tokenizer_json, evil, None, None)
    with pytest.raises(ProtocolError, match="chat template refused"):
        TokenCounter(bundle).chat_prompt_ids([{"role": "user", "content": "x"}])


def test_generation_tag_and_strftime_are_supported(tiny: Any) -> None:
    template = (
        "{% for m in messages %}{% generation %}{{ m['content'] }}{% endgeneration %}"
        "{% endfor %}{{ strftime_now('%Y') | length }}{{ dict(a=1) | tojson }}"
    )
    tiny_json = TokenizerBundle.from_hf(tiny).tokenizer_json
    counter = TokenCounter(TokenizerBundle(tiny_json, template, None, None))
    assert counter.render_chat([{"role": "user", "content": "hey"}]) == 'hey4{"a": 1}'


def test_canonical_json_form() -> None:
    bundle = TokenizerBundle('{"x": 1}', "é{{ x }}", "<s>", None)
    assert (
        bundle.canonical_bytes()
        == (
            '{"bos_token":"<s>","chat_template":"é{{ x }}","eos_token":null,'
            '"tokenizer_json":"{\\"x\\": 1}"}'
        ).encode()
    )


def test_from_bytes_refuses_bad_input() -> None:
    bundle = TokenizerBundle("{}", "t", None, None)
    data = bundle.canonical_bytes()
    with pytest.raises(TokenizerMismatch, match="expected 0x00"):
        TokenizerBundle.from_bytes(data, expected_hash=bytes(32))
    pretty = json.dumps(bundle.to_json(), indent=1).encode()
    with pytest.raises(ProtocolError, match="not in canonical JSON"):
        TokenizerBundle.from_bytes(pretty)
    with pytest.raises(ProtocolError, match="exactly the keys"):
        TokenizerBundle.from_bytes(b'{"chat_template":"t"}')
    with pytest.raises(InvalidJSON, match="tokenizer bundle is not JSON"):
        TokenizerBundle.from_bytes(b"\xff")
    with pytest.raises(ProtocolError, match="must be a string"):
        TokenizerBundle.from_bytes(
            b'{"bos_token":1,"chat_template":"t","eos_token":null,"tokenizer_json":"{}"}'
        )


def test_invalid_tokenizer_json_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="not a tokenizers serialisation"):
        TokenCounter(TokenizerBundle("{}", "t", None, None))


@pytest.fixture(scope="module")
def smollm(model_dir: Path, model_file: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir), gguf_file=model_file)


@pytest.mark.model
def test_smollm2_counts_exactly_like_transformers(smollm: Any) -> None:
    bundle = TokenizerBundle.from_hf(smollm)
    counter = TokenCounter(TokenizerBundle.from_bytes(bundle.canonical_bytes()))
    assert_counter_matches(smollm, counter)
    assert counter.eos_token_ids == [smollm.eos_token_id]
    completion = smollm("Paris is the capital of France.", add_special_tokens=False)["input_ids"]
    ids = [*completion, smollm.eos_token_id]
    assert counter.decode(ids) == "Paris is the capital of France."
