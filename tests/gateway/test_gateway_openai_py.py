"""The official ``openai`` Python SDK against the gateway: only base_url and api_key.

Nothing here imports tallystick: this is the code a user already has.
"""

from __future__ import annotations

import openai
import pytest

pytestmark = pytest.mark.chain

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def test_plain_chat_completion(gateway, api_key):
    client = openai.OpenAI(base_url=gateway.base_url, api_key=api_key)
    reply = client.chat.completions.create(model="fake-model", messages=MESSAGES, max_tokens=16)
    assert reply.choices[0].message.content
    assert reply.usage.completion_tokens > 0


def test_streaming_chat_completion(gateway, api_key):
    client = openai.OpenAI(base_url=gateway.base_url, api_key=api_key)
    stream = client.chat.completions.create(
        model="fake-model", messages=MESSAGES, max_tokens=16, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text
