"""The gateway's channels: top-ups within the deposit, idle channels closed cooperatively,
and a stream the caller dropped billed by the interrupted-request rule, to the same key."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

pytestmark = pytest.mark.chain

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
DEPOSIT = 200_000  # wei: covers the first request's worst case (~16 prompt + 16 out) a few times
IDLE_S = 12  # longer than the first test's steps take on a busy machine


@pytest.fixture(scope="module")
def token_delay():
    return 0.05


@pytest.fixture(scope="module")
def gateway_args():
    return ("--deposit", str(DEPOSIT), "--idle-close", str(IDLE_S))


def _status(gateway, key):
    return httpx.get(
        gateway.url + "/v1/tally/gateway", headers={"Authorization": f"Bearer {key}"}
    ).json()


def _usage(gateway):
    return json.loads(gateway.cli("usage", "--by", "key,channel", "--json").stdout)


def test_a_dropped_stream_is_billed_on_the_channels_next_request_to_the_same_key(
    gateway, gw_market
):
    key = gateway.create_key("dropper")
    cheap = gw_market.providers[0].address
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
    with client.chat.completions.with_streaming_response.create(
        model="fake-model", messages=MESSAGES, max_tokens=16, stream=True
    ) as raw:
        channel = raw.headers["x-tally-channel"]
        seen = 0
        for chunk in raw.parse():
            if chunk.choices and chunk.choices[0].delta.content:
                seen += 1
            if seen == 2:
                break  # the caller stops reading and closes the connection
    time.sleep(1.0)  # the node notices the disconnect and signs what it generated
    assert not [r for r in _usage(gateway) if r["key"] == "dropper"]  # nothing billed yet
    raw = client.chat.completions.with_raw_response.create(
        model="fake-model",
        messages=MESSAGES,
        max_tokens=4,
        extra_headers={"X-Tally-Provider": cheap},
    )
    assert raw.headers["x-tally-channel"] == channel
    (row,) = [r for r in _usage(gateway) if r["key"] == "dropper"]
    assert row["requests"] == 2 and row["channel"] == channel
    # The interrupted request paid for at least the two tokens the caller saw.
    reply_cost = int(raw.headers["x-tally-cost"])
    assert row["cost"] - reply_cost >= 2 * 3000


def test_a_channel_short_of_deposit_is_topped_up_not_duplicated(gateway, gw_market):
    key = gateway.create_key("topper")
    cheap = gw_market.providers[0].address.lower()
    for _ in range(8):
        response = httpx.post(
            gateway.base_url + "/chat/completions",
            json={"model": "fake-model", "messages": MESSAGES, "max_tokens": 16},
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        )
        assert response.status_code == 200, response.text
    channels = [c for c in _status(gateway, key)["channels"] if c["provider"].lower() == cheap]
    assert len(channels) == 1  # one request at a time needs one channel
    (channel,) = channels
    assert channel["deposit"] > DEPOSIT and channel["spent"] > DEPOSIT  # it was topped up
    state = gw_market.deployment.escrow.get_channel(bytes.fromhex(channel["id"][2:]))
    assert state.deposit == channel["deposit"]


def _drop_a_stream(gateway, key):
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
    with client.chat.completions.with_streaming_response.create(
        model="fake-model", messages=MESSAGES, max_tokens=16, stream=True
    ) as raw:
        seen = 0
        for chunk in raw.parse():
            seen += bool(chunk.choices and chunk.choices[0].delta.content)
            if seen == 2:
                return raw.headers["x-tally-channel"]
    raise AssertionError("the stream ended before two tokens")


def test_idle_channels_are_closed_cooperatively_and_a_dropped_stream_charged_first(
    gateway, gw_market
):
    key = gateway.create_key("idler")
    dropped = _drop_a_stream(gateway, key)
    ids = [c["id"] for c in _status(gateway, key)["channels"]]
    assert dropped in ids
    deadline = time.monotonic() + IDLE_S + 30
    while _status(gateway, key)["channels"] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _status(gateway, key)["channels"] == []
    for cid in ids:
        state = gw_market.deployment.escrow.get_channel(bytes.fromhex(cid[2:]))
        assert state.status.name.lower() == "closed", state
    # The close resolved the dropped stream from the node's record; the key paid for it.
    (row,) = [r for r in _usage(gateway) if r["key"] == "idler"]
    assert row["requests"] == 1 and row["channel"] == dropped and row["cost"] >= 2 * 3000


def test_concurrent_streams_never_share_a_channel(gateway):
    import threading

    key = gateway.create_key("crowd")
    spans: list[tuple[float, float, str, int]] = []
    errors: list[str] = []

    def call() -> None:
        client = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
        try:
            start = time.monotonic()
            with client.chat.completions.with_streaming_response.create(
                model="fake-model", messages=MESSAGES, max_tokens=8, stream=True
            ) as raw:
                tokens = sum(bool(c.choices and c.choices[0].delta.content) for c in raw.parse())
                spans.append((start, time.monotonic(), raw.headers["x-tally-channel"], tokens))
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(spans) == 6 and all(s[3] > 0 for s in spans)
    for a in spans:
        for b in spans:
            if a is not b and a[0] < b[1] and b[0] < a[1]:  # in flight at the same time
                assert a[2] != b[2], "two requests in flight shared a channel"
    (row,) = [r for r in json.loads(gateway.cli("usage", "--by", "key", "--json").stdout)
              if r["key"] == "crowd"]  # fmt: skip
    assert row["requests"] == 6
