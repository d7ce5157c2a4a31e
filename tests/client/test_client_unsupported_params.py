"""Parameters the node does not implement, sent with the official ``openai`` SDK: a 400
``unsupported_parameter`` naming the parameter, never an answer that ignored it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from tallystick.client import Chain, Tallystick, Wallet
from tallystick.protocol import Prices

pytestmark = pytest.mark.chain
PRICES = Prices(input_per_m=3_000_000_000, output_per_m=9_000_000_000)
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]
TOOL = {
    "type": "function",
    "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}},
}


@pytest.fixture
def sdk(deployment: Any, accounts: Any, w3: Any, tmp_path: Path, node_server: Any) -> Iterator[Any]:
    """The official SDK on an open channel, through the client's verifying transport."""
    node_server(prices=PRICES)
    chain = Chain(w3, deployment.registry.address, deployment.escrow.address)
    with Tallystick(Wallet(accounts.client), tmp_path / "client.db", chain=chain) as client:
        info = client.channels.open("fake-model", 10**15)
        yield client.openai(info.channel_id)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [TOOL]}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logit_bias": {"42": 5}}, "logit_bias"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"extra_body": {"top_k": 5}}, "top_k"),
        ({"logprobs": True}, "logprobs"),  # FakeEngine has none (the transformers engine has)
    ],
)
def test_unsupported_parameters_are_refused_by_name(sdk: Any, extra: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(model="fake-model", messages=MESSAGES, max_tokens=4, **extra)
    error = caught.value.body
    assert caught.value.status_code == 400
    assert (error["code"], error["param"]) == ("unsupported_parameter", param)
    assert param in error["message"]
    # the refusal cost nothing and left the channel usable
    reply = sdk.chat.completions.create(model="fake-model", messages=MESSAGES, max_tokens=4)
    assert reply.choices[0].message.content


def test_a_request_without_them_still_works(sdk: Any) -> None:
    reply = sdk.chat.completions.create(
        model="fake-model", messages=MESSAGES, max_tokens=4, presence_penalty=0, tools=[]
    )
    assert reply.choices[0].message.content
