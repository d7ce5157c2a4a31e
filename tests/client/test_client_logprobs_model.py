"""``logprobs``/``top_logprobs`` from the real SmolLM2 through the official ``openai`` SDK
(the client's verifying transport, a real node, anvil): each generated id's logprob and its
most likely alternatives, in OpenAI's shapes, plain and streamed, chat and completions."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tallystick.client import Chain, Tallystick, Wallet
from tallystick.protocol import Prices

pytestmark = [pytest.mark.chain, pytest.mark.model]
PRICES = Prices(input_per_m=10**9, output_per_m=3 * 10**9)
NAME = "SmolLM2-135M-Instruct"
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def engine(model_dir: Path, model_file: str) -> Any:
    from tallystick.node.engines import TransformersEngine
    from tallystick.node.engines._loading import load_model

    return TransformersEngine(load_model(str(model_dir / model_file)), max_batch=2)


@pytest.fixture
def client(
    engine: Any, deployment: Any, accounts: Any, w3: Any, tmp_path: Path, node_server: Any
) -> Iterator[Any]:
    node_server(engine, PRICES)
    chain = Chain(w3, deployment.registry.address, deployment.escrow.address)
    with Tallystick(Wallet(accounts.client), tmp_path / "client.db", chain=chain) as c:
        info = c.channels.open(NAME, 10**15)
        yield c, c.openai(info.channel_id)


def test_chat_logprobs_plain_and_streamed(client: Any) -> None:
    _, sdk = client
    reply = sdk.chat.completions.create(
        model=NAME, messages=MESSAGES, max_tokens=12, temperature=0, logprobs=True, top_logprobs=3
    )
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    assert "".join(t.token for t in content) == reply.choices[0].message.content
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3
        # greedy: the chosen id is the most likely one, with the same logprob
        assert t.top_logprobs[0].token == t.token
        assert math.isclose(t.top_logprobs[0].logprob, t.logprob, abs_tol=1e-6)
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob >= t.top_logprobs[2].logprob
        assert bytes(t.bytes).decode() == t.token

    chunks = list(
        sdk.chat.completions.create(
            model=NAME, messages=MESSAGES, max_tokens=12, temperature=0, logprobs=True, stream=True
        )
    )
    streamed = [
        t
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.content
    ]
    assert [t.token for t in streamed] == [t.token for t in content]
    assert all(t.top_logprobs == [] for t in streamed)  # top_logprobs not asked: none

    plain = sdk.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=4)
    assert plain.choices[0].logprobs is None  # not asked: none


def test_completions_logprobs(client: Any) -> None:
    tallystick, _ = client
    reply = tallystick.completions.create(
        model=NAME, prompt="The capital of France is", max_tokens=6, temperature=0, logprobs=2
    )
    lp = reply.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 6
    assert "".join(lp.tokens) == reply.choices[0].text
    assert all(len(top) <= 2 and max(top.values()) == pytest.approx(tok_lp, abs=1e-6)
               for top, tok_lp in zip(lp.top_logprobs, lp.token_logprobs, strict=True))  # fmt: skip
    assert lp.text_offset[0] == 0
