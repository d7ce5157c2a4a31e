"""A provider that refuses (its engine queue is full: 503) before the first token: the request
goes to the next provider, and the caller sees a normal answer."""

from __future__ import annotations

import threading

import httpx
import pytest

pytestmark = pytest.mark.chain

BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 12}


@pytest.fixture(scope="module")
def token_delay():
    return 0.2  # a request holds the cheap node's only slot for over two seconds


@pytest.fixture(scope="module")
def cheap_node_args():
    return ("--max-batch", "1", "--max-queue", "1")  # a third request at once is refused


def test_a_refusal_before_the_first_token_fails_over_unseen(gateway, api_key, gw_market):
    cheap, dear = (p.address.lower() for p in gw_market.providers)
    results: list[httpx.Response] = []

    def call() -> None:
        results.append(
            httpx.post(
                gateway.base_url + "/chat/completions",
                json=BODY,
                headers={"Authorization": f"Bearer {api_key}"},
                timeout=120,
            )
        )

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [200, 200, 200], [r.text for r in results]
    served_by = sorted(r.headers["x-tally-provider"].lower() for r in results)
    assert cheap in served_by and dear in served_by
    assert "503" in gateway.log() and f"failover from {gw_market.providers[0].address}" in (
        gateway.log()
    )
