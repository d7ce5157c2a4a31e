"""Local API keys: rate limits (429), budgets (402), spend that survives a restart, usage views."""

from __future__ import annotations

import csv
import io
import json

import httpx
import pytest

pytestmark = pytest.mark.chain

BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}


def _post(gateway, key, body=BODY):
    return httpx.post(
        gateway.base_url + "/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )


def test_requests_per_minute_limit_answers_429_with_openai_headers(gateway):
    key = gateway.create_key("rpm2", "--rpm", "2")
    assert _post(gateway, key).status_code == 200
    ok = _post(gateway, key)
    assert ok.status_code == 200
    assert ok.headers["x-ratelimit-limit-requests"] == "2"
    refused = _post(gateway, key)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(refused.headers["retry-after"]) >= 1


def test_tokens_per_minute_limit_counts_prompt_and_max_tokens(gateway):
    key = gateway.create_key("tpm", "--tpm", "40")
    refused = _post(gateway, key, {**BODY, "max_tokens": 100})
    assert refused.status_code == 429
    assert "lower max_tokens" in refused.json()["error"]["message"]
    assert _post(gateway, key).status_code == 200


def test_budget_is_402_before_anything_is_spent_and_survives_a_restart(gateway):
    key = gateway.create_key("small", "--max-total", "100000")  # wei: a few requests
    served = 0
    while (response := _post(gateway, key)).status_code == 200:
        served += 1
        assert served < 50
    assert response.status_code == 402
    error = response.json()["error"]
    assert error["code"] == "budget_exceeded" and error["type"] == "insufficient_quota"
    spent = [r for r in json.loads(gateway.cli("usage", "--by", "key", "--json").stdout)
             if r["key"] == "small"]  # fmt: skip
    assert spent[0]["requests"] == served and spent[0]["cost"] <= 100000

    gateway.stop()
    gateway.start()
    assert _post(gateway, key).status_code == 402  # the spend came back from the store
    after = [r for r in json.loads(gateway.cli("usage", "--by", "key", "--json").stdout)
             if r["key"] == "small"]  # fmt: skip
    assert after == spent
    # Raising the limit applies at once, without a restart.
    gateway.cli("gateway", "keys", "limit", "small", "--clear", "max-total")
    assert _post(gateway, key).status_code == 200


def test_daily_budget(gateway):
    key = gateway.create_key("daily0", "--max-daily", "0")
    response = _post(gateway, key)
    assert response.status_code == 402
    assert "daily budget" in response.json()["error"]["message"]


def test_revoked_key_is_refused(gateway):
    key = gateway.create_key("gone")
    assert _post(gateway, key).status_code == 200
    gateway.cli("gateway", "keys", "revoke", "gone")
    response = _post(gateway, key)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_usage_by_key_model_provider_day_as_table_csv_and_json(gateway, gw_market):
    key = gateway.create_key("usage")
    for _ in range(2):
        assert _post(gateway, key).status_code == 200
    rows = json.loads(gateway.cli("usage", "--by", "key,model,provider,day", "--json").stdout)
    mine = [r for r in rows if r["key"] == "usage"]
    assert len(mine) == 1 and mine[0]["requests"] == 2
    assert mine[0]["model"] == "fake-model"
    assert mine[0]["provider"].lower() == gw_market.providers[0].address.lower()
    # 1000 wei per input token, 3000 per output token at the cheap provider: exact.
    assert mine[0]["cost"] == mine[0]["prompt_tokens"] * 1000 + mine[0]["completion_tokens"] * 3000
    table = list(
        csv.DictReader(io.StringIO(gateway.cli("usage", "--by", "key,channel", "--csv").stdout))
    )
    assert {"key", "channel", "requests", "prompt_tokens", "completion_tokens", "cost"} <= set(
        table[0]
    )
    assert sum(int(r["requests"]) for r in table) == sum(r["requests"] for r in rows)
    text = gateway.cli("usage", "--by", "key").stdout
    assert "usage" in text and "total" in text
    # without key: every verified request of the store (the gateway's among them)
    text = gateway.cli("usage").stdout
    assert "fake-model" in text and "total" in text
    bad = gateway.cli("usage", "--by", "colour", check=False)
    assert bad.returncode != 0 and "cannot group by colour" in bad.stderr
    assert "Traceback" not in bad.stderr
