"""Unit tests of the gateway's pure parts: the routing score, limits, request plans, the ledger."""

from __future__ import annotations

import pytest
from tallystick.client import Offer
from tallystick.client._gateway import GatewayError, GatewaySettings, Ledger, Router, RouteRequest
from tallystick.client._gateway._limits import Limits
from tallystick.client._gateway._plan import plan_request
from tallystick.protocol import ETH

A = "0x" + "a" * 40
B = "0x" + "b" * 40
C = "0x" + "c" * 40


def offer(provider: str, inp: int, out: int, token: str = ETH, model: str = "m") -> Offer:
    return Offer(provider, b"\0" * 32, model, inp, out, token, b"\0" * 32, 2048, True,
                 endpoint="http://x")  # fmt: skip


def route(**kw: object) -> RouteRequest:
    base: dict[str, object] = {"model": "m", "prompt_tokens": 100, "max_tokens": 100, "token": ETH}
    return RouteRequest(**{**base, **kw})  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_unmeasured_providers_rank_by_price():
    router = Router()
    ranked = router.rank([offer(B, 2_000_000, 6_000_000), offer(A, 1_000_000, 3_000_000)], route())
    assert [c.listing.provider for c in ranked] == [A, B]
    assert ranked[0].cost == 400 and ranked[1].cost == 800


def test_a_much_faster_provider_beats_a_slightly_cheaper_one():
    router = Router(latency_weight=1.0)
    router.succeeded(A, ttft_s=2.0, tokens=101, gen_s=20.0)  # 5 tokens/s
    router.succeeded(B, ttft_s=0.1, tokens=101, gen_s=1.0)  # 100 tokens/s
    ranked = router.rank([offer(A, 1_000_000, 3_000_000), offer(B, 1_100_000, 3_300_000)], route())
    assert ranked[0].listing.provider == B
    # With latency ignored, price alone decides.
    assert (
        Router(latency_weight=0.0)
        .rank([offer(A, 1_000_000, 3_000_000), offer(B, 1_100_000, 3_300_000)], route())[0]
        .listing.provider
        == A
    )


def test_a_failed_provider_goes_last_until_its_backoff_ends():
    clock = Clock()
    router = Router(clock=clock)
    offers = [offer(A, 1_000_000, 3_000_000), offer(B, 2_000_000, 6_000_000)]
    router.failed(A, "refused")
    ranked = router.rank(offers, route())
    assert [c.listing.provider for c in ranked] == [B, A] and not ranked[1].healthy
    clock.t += 2.1
    assert router.rank(offers, route())[0].listing.provider == A
    router.failed(A, "again")  # consecutive: 4 s now
    clock.t += 2.1
    assert router.rank(offers, route())[0].listing.provider == B


def test_disputed_pinned_capped_and_other_token_offers_are_not_candidates():
    router = Router()
    offers = [offer(A, 1, 1), offer(B, 5_000_000, 5_000_000), offer(C, 1, 1, token="0x" + "9" * 40)]
    assert [c.listing.provider for c in router.rank(offers, route(pin=B))] == [B]
    assert [c.listing.provider for c in router.rank(offers, route(max_output_price=10))] == [A]
    router.disputed(A, "billing dispute")
    assert [c.listing.provider for c in router.rank(offers, route())] == [B]


def test_limits_rate_and_budget(tmp_path):
    from tallystick.client._gateway._ledger import Spend

    ledger = Ledger(tmp_path / "s.db")
    key, _ = ledger.create_key("k", max_total=1000, rpm=2)
    clock = Clock()
    limits = Limits(ledger, clock=clock)
    first = limits.admit(key, 10, 600)
    with pytest.raises(GatewayError) as caught:
        limits.admit(key, 10, 600)  # 600 reserved + 600 > 1000
    assert caught.value.status == 402 and caught.value.code == "budget_exceeded"
    ledger.record(Spend(key.id, "m", A, "0x01", 1, ETH, 1, 1, 300))
    limits.release(first, 2)
    limits.admit(key, 10, 700)  # 300 spent + 700 = 1000: allowed
    with pytest.raises(GatewayError) as caught:
        limits.admit(key, 10, 0)
    assert caught.value.status == 429 and caught.value.param == "requests"
    clock.t += 61
    limits.admit(key, 10, 0)
    assert ledger.spent(key.id) == 300


def test_ledger_keys_are_hashed_and_usage_groups(tmp_path):
    from tallystick.client._gateway._ledger import Spend

    ledger = Ledger(tmp_path / "s.db")
    key, secret = ledger.create_key("k")
    assert secret.startswith("tsk-") and secret not in (tmp_path / "s.db").read_bytes().decode(
        "latin-1"
    )
    assert ledger.authenticate(secret) == key and ledger.authenticate(secret + "x") is None
    with pytest.raises(Exception, match="exists already"):
        ledger.create_key("k")
    ledger.record(Spend(key.id, "m", A, "0x01", 1, ETH, 10, 5, 100))
    ledger.record(Spend(key.id, "m", B, "0x02", 1, ETH, 20, 5, 200))
    rows = ledger.usage(("key", "provider"))
    assert [(r["provider"], r["cost"]) for r in rows] == [(A, 100), (B, 200)]
    assert ledger.usage(())[0]["cost"] == 300
    ledger.revoke("k")
    assert ledger.authenticate(secret) is None


SETTINGS = GatewaySettings(budget=10**18, default_max_tokens=64)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"[1]", "invalid_request"),
        (b"{", "invalid_json"),
        (b'{"model": "m"}', "invalid_request"),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2}',
            "invalid_request",
        ),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}',
            "invalid_request",
        ),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "tallystick": 1}',
            "invalid_request",
        ),
        (b"[" * 100_000, "invalid_json"),
    ],
)
def test_bad_requests_are_400s(raw, code):
    with pytest.raises(GatewayError) as caught:
        plan_request("chat", raw, {}, SETTINGS)
    assert caught.value.status == 400 and caught.value.code == code


def test_plan_adds_max_tokens_and_takes_the_hints_out():
    raw = b'{"model": "m", "messages": [{"role": "user", "content": "hello"}], ' \
          b'"tallystick": {"provider": "' + A.encode() + b'", "max_input_price": 5}}'  # fmt: skip
    body, r = plan_request("chat", raw, {"x-tally-max-output-price": "7"}, SETTINGS)
    assert "tallystick" not in body and body["max_tokens"] == 64
    assert (r.pin, r.max_input_price, r.max_output_price, r.max_tokens) == (A, 5, 7, 64)


class _FakeLedger:
    def authenticate(self, secret: str) -> object | None:
        return object() if secret == "tsk-good" else None


class _FakeGateway:
    """Just enough of ``Gateway`` for the app's error paths (no chain, no node)."""

    settings = SETTINGS
    ledger = _FakeLedger()

    def models(self) -> list[dict[str, object]]:
        from tallystick.protocol import ChainUnavailable

        raise ChainUnavailable("cannot reach the chain RPC at http://127.0.0.1:9")


def test_the_app_answers_every_error_as_an_openai_envelope():
    from starlette.testclient import TestClient
    from tallystick.client._gateway import create_app

    client = TestClient(create_app(_FakeGateway()), raise_server_exceptions=False)  # type: ignore[arg-type]
    cases = [
        ("GET", "/v1/models", {}, 502, "upstream_error"),
        ("POST", "/v1/chat/completions", {}, 401, "invalid_api_key"),
        (
            "POST",
            "/v1/chat/completions",
            {"Authorization": "Bearer tsk-bad"},
            401,
            "invalid_api_key",
        ),
        ("GET", "/v1/nothing", {}, 404, "not_found"),
        ("PUT", "/v1/completions", {}, 405, "method_not_allowed"),
    ]
    for method, path, headers, status, code in cases:
        response = client.request(method, path, headers=headers)
        assert response.status_code == status, (path, response.text)
        error = response.json()["error"]
        assert error["code"] == code and set(error) == {"message", "type", "param", "code"}
    refused = client.post(
        "/v1/chat/completions", content=b"{", headers={"Authorization": "Bearer tsk-good"}
    )
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_json"
