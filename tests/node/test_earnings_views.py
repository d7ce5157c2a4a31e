"""The earnings aggregation behind ``tallystick-node earnings`` and ``/dashboard``."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from tallystick.node._earnings import (
    auto_bucket,
    earnings,
    performance,
    request_earning,
)
from tallystick.node._ledger import UsageRow
from tallystick.protocol import ChannelState, ChannelStatus, Prices, cost_of, parse_since

PRICES = Prices(input_per_m=200_000, output_per_m=600_000)  # 0.20 / 0.60 USDC per 1M
USDC = "0x5FbDB2315678afecb367f032d93F642f64180aa3"


def _channel(cid: bytes, deposit: int = 10**9, token: str = USDC) -> ChannelState:
    return ChannelState(
        cid, "0xc", "0xp", token, ChannelStatus.OPEN, b"m" * 32, PRICES, deposit, 0, 0, 0, 0
    )


def _rows(cid: bytes, counts: list[tuple[int, int]], t0: float, model: str = "m") -> list[UsageRow]:
    rows, inp, out = [], 0, 0
    for i, (p, c) in enumerate(counts):
        inp, out = inp + p, out + c
        timings = {"ttft_ms": 10.0 + i, "itl_ms": 2.0, "total_ms": 10.0 + i + 2 * (c - 1)}
        rows.append(UsageRow(cid, i + 1, model, t0 + 60 * i, p, c, inp, out, timings))
    return rows


def test_per_request_earnings_sum_to_the_cost_of_the_totals_never_rounded_per_request():
    cid = b"\x01" * 32
    counts = [(7, 3)] * 50  # each request alone costs 3.2 base units: per-request floors lose
    rows = _rows(cid, counts, 1_000_000.0)
    total = sum(request_earning(r, _channel(cid)) for r in rows)
    assert total == cost_of(350, 150, PRICES) == 160
    assert sum(cost_of(7, 3, PRICES) for _ in counts) == 150  # what flooring per request gives


def test_earnings_stop_at_the_deposit():
    cid = b"\x02" * 32
    rows = _rows(cid, [(1_000_000, 0), (1_000_000, 0)], 0.0)
    ch = _channel(cid, deposit=300_000)
    assert [request_earning(r, ch) for r in rows] == [200_000, 100_000]


def test_earnings_per_bucket_model_and_token():
    a, b = b"\x0a" * 32, b"\x0b" * 32
    rows = _rows(a, [(10, 5)] * 3, 3600.0, "m1") + _rows(b, [(20, 0)], 7200.0, "m2")
    channels = {a: _channel(a), b: _channel(b, token="0x" + "00" * 20)}
    by_hour = earnings(sorted(rows, key=lambda r: r.created_at), channels, 3600, 0.0)
    assert [(e.start, e.model, e.requests, e.input_tokens, e.output_tokens) for e in by_hour] == [
        (3600.0, "m1", 3, 30, 15),
        (7200.0, "m2", 1, 20, 0),
    ]
    whole = earnings(rows, channels, None, 0.0)
    assert {(e.model, e.token, e.amount) for e in whole} == {
        ("m1", USDC, cost_of(30, 15, PRICES)),
        ("m2", "0x" + "00" * 20, cost_of(20, 0, PRICES)),
    }
    # a record of a channel the ledger does not know: its tokens, no amount
    assert earnings(rows[:1], {}, None, 0.0)[0].token == "unknown"


def test_performance_medians_per_bucket():
    cid = b"\x03" * 32
    rows = _rows(cid, [(5, 11), (5, 21), (5, 31)], 0.0)
    (p,) = performance(rows, 3600, 0.0)
    assert p.requests == 3 and p.completion_tokens == 63
    assert p.ttft_ms == 11.0 and p.itl_ms == 2.0
    assert p.tokens_per_s == pytest.approx(500.0)  # 2 ms per token after the first


def test_since_accepts_durations_and_iso_dates():
    now = 1_800_000_000.0
    assert parse_since("7d", now) == now - 7 * 86400
    assert parse_since("24h", now) == now - 86400
    assert parse_since("30m", now) == now - 1800
    assert parse_since("2026-11-27", now) == datetime(2026, 11, 27, tzinfo=UTC).timestamp()
    assert (
        parse_since("2026-11-27T18:00+01:00", now)
        == datetime(2026, 11, 27, 17, tzinfo=UTC).timestamp()
    )
    with pytest.raises(ValueError, match="duration"):
        parse_since("last tuesday", now)


def test_buckets_fit_the_window():
    assert auto_bucket(0, 3600) == 60
    assert auto_bucket(0, 86400) == 3600
    assert auto_bucket(0, 7 * 86400) == 6 * 3600
    assert auto_bucket(0, 10**9) == 7 * 86400
