"""The official ``openai`` Python SDK against the gateway: only base_url and api_key.

Nothing in the client code imports tallystick: it is the code a user already has. What the
gateway did is read back afterwards through its usage view and status route.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest

pytestmark = pytest.mark.chain

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def _usage(gateway, *by):
    result = gateway.cli("usage", "--by", ",".join(by), "--json")
    return json.loads(result.stdout)


def test_plain_chat_completion_is_verified_and_charged_to_the_key(gateway, api_key, gw_market):
    before = sum(r["requests"] for r in _usage(gateway, "key"))
    client = openai.OpenAI(base_url=gateway.base_url, api_key=api_key)
    raw = client.chat.completions.with_raw_response.create(
        model="fake-model", messages=MESSAGES, max_tokens=16
    )
    reply = raw.parse()
    assert reply.choices[0].message.content
    assert reply.usage.completion_tokens > 0
    # Routed to the cheaper of the two providers; the bill's cost is in a header.
    assert raw.headers["x-tally-provider"].lower() == gw_market.providers[0].address.lower()
    cost = int(raw.headers["x-tally-cost"])
    expected = (reply.usage.prompt_tokens * 1000) + (reply.usage.completion_tokens * 3000)
    assert cost == expected
    rows = _usage(gateway, "key")
    assert sum(r["requests"] for r in rows) == before + 1
    assert any(r["key"] == "tests" and r["cost"] >= cost for r in rows)


def test_streaming_chat_completion_is_charged_to_the_key(gateway, api_key):
    before = sum(r["requests"] for r in _usage(gateway, "key"))
    client = openai.OpenAI(base_url=gateway.base_url, api_key=api_key)
    stream = client.chat.completions.create(
        model="fake-model", messages=MESSAGES, max_tokens=16, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text
    # The SDK hangs up right after [DONE]: the verified bill is charged all the same.
    assert sum(r["requests"] for r in _usage(gateway, "key")) == before + 1


def test_streaming_with_usage(gateway, api_key):
    client = openai.OpenAI(base_url=gateway.base_url, api_key=api_key)
    stream = client.chat.completions.create(
        model="fake-model",
        messages=MESSAGES,
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = [c.usage for c in stream if c.usage is not None]
    assert usage and usage[-1].completion_tokens > 0


def test_text_completion_plain_and_streaming(gateway, api_key):
    client = openai.OpenAI(base_url=gateway.base_url, api_key=api_key)
    reply = client.completions.create(model="fake-model", prompt="Once upon a", max_tokens=8)
    assert reply.choices[0].text
    stream = client.completions.create(
        model="fake-model", prompt="Once upon a", max_tokens=8, stream=True
    )
    assert "".join(c.choices[0].text for c in stream if c.choices)


def test_models_lists_the_union_with_prices(gateway, api_key, gw_market):
    client = openai.OpenAI(base_url=gateway.base_url, api_key=api_key)
    models = client.models.list()
    entry = next(m for m in models.data if m.id == "fake-model")
    extra = entry.model_extra or {}
    assert extra["pricing"]["input_per_million"] == 1_000_000_000  # the cheapest
    providers = {p["provider"].lower() for p in extra["providers"]}
    assert providers == {p.address.lower() for p in gw_market.providers}


def test_pin_and_price_cap_are_extra_fields_plain_clients_never_send(gateway, api_key, gw_market):
    client = openai.OpenAI(base_url=gateway.base_url, api_key=api_key)
    dear = gw_market.providers[1].address
    raw = client.chat.completions.with_raw_response.create(
        model="fake-model",
        messages=MESSAGES,
        max_tokens=4,
        extra_body={"tallystick": {"provider": dear}},
    )
    assert raw.headers["x-tally-provider"].lower() == dear.lower()
    raw = client.chat.completions.with_raw_response.create(
        model="fake-model",
        messages=MESSAGES,
        max_tokens=4,
        extra_headers={"X-Tally-Provider": dear},
    )
    assert raw.headers["x-tally-provider"].lower() == dear.lower()
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(
            model="fake-model",
            messages=MESSAGES,
            max_tokens=4,
            extra_headers={"X-Tally-Max-Output-Price": "1000"},
        )
    assert caught.value.status_code == 503
    assert caught.value.body["code"] == "no_provider"
    assert "above your cap" in caught.value.body["message"]


def test_errors_are_openai_envelopes(gateway, api_key):
    client = openai.OpenAI(base_url=gateway.base_url, api_key="tsk-not-a-key")
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model="fake-model", messages=MESSAGES, max_tokens=4)
    assert caught.value.body["code"] == "invalid_api_key"
    client = openai.OpenAI(base_url=gateway.base_url, api_key=api_key)
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES, max_tokens=4)
    assert caught.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="fake-model", messages=MESSAGES, max_tokens=4, n=2)
    for method, path in (("GET", "/nope"), ("DELETE", "/v1/models")):
        response = httpx.request(method, gateway.url + path)
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_status_shows_measured_providers_and_channels(gateway, api_key):
    status = httpx.get(
        gateway.url + "/v1/tally/gateway", headers={"Authorization": f"Bearer {api_key}"}
    ).json()
    measured = [p for p in status["providers"].values() if p["requests"]]
    assert measured and all(p["ttft_s"] is not None for p in measured)
    assert status["channels"] and all(c["spent"] <= c["deposit"] for c in status["channels"])
