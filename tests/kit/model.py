"""Models for tests: the real SmolLM2 files, llama-server, and a tiny random Llama.

- ``model_dir``/``model_file``: the SmolLM2-135M-Instruct GGUF folder and file (skips when
  absent); ``llama_server_bin``: the llama-server `make llama` builds;
  ``llama_cpp_python``: ``llama_cpp_python_server`` (command and environment of
  llama-cpp-python's server on the same build) once `make llama` has built it.
- ``tiny_dir``: a model folder (config, random weights, tokenizer with a ChatML template)
  saved once per session; loading it exercises the real folder path of ``load_model``.
- ``tiny_model``: that folder loaded (a ``LoadedModel``); ``tiny_counter``: a TokenCounter on
  the tiny tokenizer (no model, no torch).
- ``bigram_model(script, after)``: the same architecture rewired into a deterministic bigram
  machine that, after the id ``after``, generates exactly ``script`` (one id each step), so
  EOS, stop strings and UTF-8 tests control what the real engine loop produces.
Helpers: ``run`` (a coroutine to completion), ``chat`` (a Prompt), ``with_eos``.
torch and transformers are imported inside the fixtures that need them.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
from tallystick.node.engines import TINY_CHAT_TEMPLATE, Prompt, tiny_tokenizer_json
from tallystick.node.engines._loading import LoadedModel, load_model

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = ROOT / ".models" / "SmolLM2-135M-Instruct"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """Folder holding the SmolLM2-135M-Instruct GGUF (``model_file`` names the file)."""
    if not (MODEL_DIR / MODEL_FILE).exists():
        pytest.skip(f"model not found at {MODEL_DIR / MODEL_FILE}: run `make model`")
    return MODEL_DIR


@pytest.fixture(scope="session")
def model_file(model_dir: Path) -> str:
    """File name of the GGUF inside ``model_dir``."""
    return MODEL_FILE


@pytest.fixture(scope="session")
def llama_server_bin() -> Path:
    """The llama-server binary `make llama` builds (``make test`` builds it first; in CI a
    missing one fails rather than skips)."""
    from tallystick.node.engines import built_llama_server

    binary = built_llama_server()
    if not binary.is_file():
        message = f"llama-server not built at {binary}: run `make llama`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return binary


@pytest.fixture(scope="session")
def llama_cpp_python() -> Callable[..., tuple[list[str], dict[str, str]]]:
    """``llama_cpp_python_server(gguf, port, ...)`` once `make llama` has installed
    llama-cpp-python's server beside llama-server (in CI a missing one fails)."""
    from tallystick.node.engines import (
        ModelLoadError,
        built_llama_cpp_python,
        llama_cpp_python_server,
    )

    try:
        llama_cpp_python_server("probe.gguf", 0)
    except ModelLoadError as exc:
        message = f"{exc} (looked for {built_llama_cpp_python()})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return llama_cpp_python_server


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def tiny_config(vocab_size: int) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=None,
        bos_token_id=None,
        pad_token_id=None,
        tie_word_embeddings=False,
    )


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from tokenizers import Tokenizer
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-llama")
    backend = Tokenizer.from_str(tiny_tokenizer_json())
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>")
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config(backend.get_vocab_size()))
    with torch.no_grad():  # sharper logits than the default init, so greedy varies by context
        model.lm_head.weight.mul_(20)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_counter() -> Any:
    from tallystick.node.engines import tiny_tokenizer_bundle
    from tallystick.protocol import TokenCounter

    return TokenCounter(tiny_tokenizer_bundle())


@pytest.fixture(scope="session")
def tiny_model(tiny_dir: Path) -> LoadedModel:
    return load_model(str(tiny_dir))


@pytest.fixture(scope="session")
def bigram_model(tiny_dir: Path) -> Callable[[Sequence[int], int], LoadedModel]:
    def build(script: Sequence[int], after: int) -> LoadedModel:
        loaded = load_model(str(tiny_dir))
        _rewire_as_bigram(loaded.model, [after, *script])
        return loaded

    return build


def _rewire_as_bigram(model: Any, chain: list[int]) -> None:
    """Zero every block's output so the residual stream is the embedding, then point the
    LM head of chain[i + 1] at the embedding of chain[i]: greedy follows the chain."""
    import torch

    assert len(set(chain[:-1])) == len(chain) - 1, "chain ids must not repeat"
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed = model.model.embed_tokens.weight  # (vocab, hidden)
        embed.copy_(torch.nn.functional.normalize(torch.randn_like(embed), dim=-1) * 8)
        model.model.norm.weight.fill_(1.0)
        model.lm_head.weight.zero_()
        for prev, nxt in itertools.pairwise(chain):
            model.lm_head.weight[nxt] = embed[prev] * 10


def chat(counter: Any, text: str) -> Prompt:
    messages = [{"role": "user", "content": text}]
    return Prompt(ids=counter.chat_prompt_ids(messages), messages=messages)


def with_eos(loaded: LoadedModel, *eos: int) -> LoadedModel:
    return replace(loaded, eos_ids=frozenset(eos))


# --- driving an engine directly (the real llama.cpp engine tests) ------------------------------


async def started(engine: Any, body: Any) -> Any:
    """``await body()`` with ``engine`` started, stopped after it (each test's own event loop)."""
    await engine.start()
    try:
        return await body()
    finally:
        await engine.stop()


async def generate_all(engine: Any, prompt: Any, params: Any) -> tuple[list[int], str, Any]:
    """Every id, the text and the finish reason ``engine`` generates for ``prompt``."""
    ids: list[int] = []
    text, finish = "", None
    async for event in engine.generate(prompt, params):
        ids += event.token_ids
        text += event.text
        finish = event.finish_reason or finish
    return ids, text, finish
