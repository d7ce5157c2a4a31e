"""What this node earned, from its own ledger: per model and token, over time.

One aggregation for ``tallystick-node earnings`` and the ``/dashboard`` page. A request's
earning is the cost its record added to the channel's cumulative totals, at the channel's
snapshot prices and capped at its deposit (exactly what a claim of the countersigned totals
pays, once the client countersigns it): cost is never summed per request, so rounding never
accumulates (docs/protocol.md §3).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from tallystick.protocol import ChannelState, cost_of

from ._ledger import UsageRow

__all__ = [
    "Earning",
    "Performance",
    "auto_bucket",
    "cost_added",
    "earnings",
    "performance",
    "request_earning",
]

_BUCKETS = (60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400)


@dataclass(frozen=True)
class Earning:
    """Served requests of one model paid in one token, in one time bucket (or all time)."""

    start: float  # unix seconds: the bucket's start (the window's start when not bucketed)
    model: str
    token: str
    requests: int
    input_tokens: int
    output_tokens: int
    amount: int  # base units of ``token``


@dataclass(frozen=True)
class Performance:
    """Speed of the requests served in one time bucket (medians over its requests)."""

    start: float
    requests: int
    completion_tokens: int
    tokens_per_s: float  # median decode speed of one request: ids after the first / time
    ttft_ms: float
    itl_ms: float


def auto_bucket(since: float, now: float, most: int = 60) -> int:
    """The smallest bucket (1 min … 1 week) that cuts ``[since, now]`` into ``most`` or fewer."""
    span = max(now - since, 1.0)
    return next((b for b in _BUCKETS if span / b <= most), _BUCKETS[-1])


def request_earning(row: UsageRow, channel: ChannelState) -> int:
    """The cost this request added to its channel (capped at the deposit), base units."""
    return cost_added(
        channel, (row.input_tokens, row.output_tokens), row.prompt_tokens, row.completion_tokens
    )


def cost_added(channel: ChannelState, totals: tuple[int, int], prompt: int, completion: int) -> int:
    """What a request of ``prompt``/``completion`` tokens that brought the channel to
    ``totals`` added to the cost of its cumulative totals (capped at the deposit)."""
    after = cost_of(totals[0], totals[1], channel.prices)
    before = cost_of(totals[0] - prompt, totals[1] - completion, channel.prices)
    return min(after, channel.deposit) - min(before, channel.deposit)


def earnings(
    rows: list[UsageRow], channels: dict[bytes, ChannelState], bucket: int | None, since: float
) -> list[Earning]:
    """Sum ``rows`` per (bucket, model, token); one bucket from ``since`` when ``bucket`` is None.

    A record whose channel the ledger does not know (never on a node that served it) is
    counted in tokens under the token ``"unknown"`` with no amount.
    """
    sums: dict[tuple[float, str, str], list[int]] = {}
    for row in rows:
        channel = channels.get(row.channel_id)
        token = channel.token if channel else "unknown"
        start = _bucket_start(row.created_at, bucket, since)
        acc = sums.setdefault((start, row.model, token), [0, 0, 0, 0])
        acc[0] += 1
        acc[1] += row.prompt_tokens
        acc[2] += row.completion_tokens
        acc[3] += request_earning(row, channel) if channel else 0
    return [
        Earning(start, model, token, *acc) for (start, model, token), acc in sorted(sums.items())
    ]


def performance(rows: list[UsageRow], bucket: int, since: float) -> list[Performance]:
    """Per bucket: requests, completion tokens, median decode tokens/s, TTFT and ITL."""
    grouped: dict[float, list[UsageRow]] = {}
    for row in rows:
        if row.timings:
            grouped.setdefault(_bucket_start(row.created_at, bucket, since), []).append(row)
    return [_speed(start, group) for start, group in sorted(grouped.items())]


def _speed(start: float, rows: list[UsageRow]) -> Performance:
    speeds = []
    for row in rows:
        decode_s = (row.timings.get("total_ms", 0) - row.timings.get("ttft_ms", 0)) / 1e3
        if row.completion_tokens > 1 and decode_s > 0:
            speeds.append((row.completion_tokens - 1) / decode_s)
    return Performance(
        start=start,
        requests=len(rows),
        completion_tokens=sum(r.completion_tokens for r in rows),
        tokens_per_s=round(statistics.median(speeds), 2) if speeds else 0.0,
        ttft_ms=round(statistics.median(r.timings.get("ttft_ms", 0.0) for r in rows), 3),
        itl_ms=round(statistics.median(r.timings.get("itl_ms", 0.0) for r in rows), 3),
    )


def _bucket_start(at: float, bucket: int | None, since: float) -> float:
    if bucket is None:
        return since
    return float(int(at // bucket) * bucket)
