"""LiteLLM against the gateway: ``model="openai/<name>"``, ``api_base``, ``api_key``."""

from __future__ import annotations

import asyncio
import os

import pytest

pytestmark = [pytest.mark.chain, pytest.mark.filterwarnings("ignore::UserWarning")]

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network at import
litellm = pytest.importorskip("litellm")

MESSAGES = [{"role": "user", "content": "Name a colour."}]


def test_litellm_sync(gateway, api_key):
    reply = litellm.completion(
        model="openai/fake-model",
        api_base=gateway.base_url,
        api_key=api_key,
        messages=MESSAGES,
        max_tokens=8,
    )
    assert reply.choices[0].message.content
    assert reply.usage.completion_tokens > 0


def test_litellm_streaming(gateway, api_key):
    stream = litellm.completion(
        model="openai/fake-model",
        api_base=gateway.base_url,
        api_key=api_key,
        messages=MESSAGES,
        max_tokens=8,
        stream=True,
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    assert text


def test_litellm_async_plain_and_streaming(gateway, api_key):
    async def run() -> tuple[str, str]:
        reply = await litellm.acompletion(
            model="openai/fake-model",
            api_base=gateway.base_url,
            api_key=api_key,
            messages=MESSAGES,
            max_tokens=8,
        )
        stream = await litellm.acompletion(
            model="openai/fake-model",
            api_base=gateway.base_url,
            api_key=api_key,
            messages=MESSAGES,
            max_tokens=8,
            stream=True,
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream])
        return reply.choices[0].message.content, text

    plain, streamed = asyncio.run(run())
    assert plain and streamed


def test_litellm_sees_a_budget_error_as_an_openai_error(gateway):
    key = gateway.create_key("litellm-broke", "--max-total", "0")
    with pytest.raises(litellm.exceptions.APIError) as caught:
        litellm.completion(
            model="openai/fake-model",
            api_base=gateway.base_url,
            api_key=key,
            messages=MESSAGES,
            max_tokens=8,
            num_retries=0,
        )
    assert "budget" in str(caught.value)
