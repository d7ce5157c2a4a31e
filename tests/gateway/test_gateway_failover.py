"""Failover: two providers, the cheaper one SIGKILLed while requests are in flight.

Every call that had not started streaming when the node died succeeds (on the other
provider, a little later); a stream that had shown tokens from the dead node ends in an
OpenAI error event. Nothing in the client code imports tallystick.
"""

from __future__ import annotations

import threading
import time

import openai
import pytest

pytestmark = pytest.mark.chain

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def token_delay():
    return 0.08  # ~1 s per 12-token answer: a kill lands mid-stream


def _worker(base_url, key, stream, stop, results):
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)
    while not stop.is_set():
        tokens = 0
        try:
            if stream:
                chunks = client.chat.completions.create(
                    model="fake-model", messages=MESSAGES, max_tokens=12, stream=True
                )
                for chunk in chunks:
                    if chunk.choices and chunk.choices[0].delta.content:
                        tokens += 1
            else:
                reply = client.chat.completions.create(
                    model="fake-model", messages=MESSAGES, max_tokens=12
                )
                assert reply.choices[0].message.content
            results.append(("ok", stream, tokens))
        except Exception as exc:
            results.append((f"{type(exc).__name__}: {exc}", stream, tokens))


def test_killing_a_provider_fails_no_call_that_had_not_started_streaming(
    gateway, api_key, gw_market
):
    cheap, dear = gw_market.providers
    client = openai.OpenAI(base_url=gateway.base_url, api_key=api_key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="fake-model", messages=MESSAGES, max_tokens=4
    )
    assert raw.headers["x-tally-provider"].lower() == cheap.address.lower()

    results: list[tuple[str, bool, int]] = []
    stop = threading.Event()
    workers = [
        threading.Thread(
            target=_worker, args=(gateway.base_url, api_key, i % 2 == 0, stop, results)
        )
        for i in range(4)
    ]
    for w in workers:
        w.start()
    time.sleep(4.0)
    done_before_kill = len(results)
    cheap.node.kill()
    time.sleep(6.0)
    stop.set()
    for w in workers:
        w.join(timeout=60)

    failed = [r for r in results if r[0] != "ok"]
    assert done_before_kill > 0 and len(results) > done_before_kill + 4, results
    # Only streams that had shown tokens (from the dead node) may fail, and then as an API error.
    assert all(stream and tokens > 0 for _, stream, tokens in failed), failed
    assert all("APIError" in reason or "provider" in reason for reason, _, _ in failed), failed
    assert not [r for r in failed if not r[1]], "a plain request failed"
    # Requests were in flight on the dead node and went to the other one.
    assert f"failover from {cheap.address}" in gateway.log()

    # After the kill every request goes to the other provider.
    raw = client.chat.completions.with_raw_response.create(
        model="fake-model", messages=MESSAGES, max_tokens=4
    )
    assert raw.headers["x-tally-provider"].lower() == dear.address.lower()
