"""The load generator every serving-type section shares: streams of requests in threads, one
timeline per request, and the summary of a level (tokens/s, TTFT and inter-token latency).

A request is a function ``request(stream, i) -> Timeline``; three kinds exist:
``sdk_request`` (the client SDK on its own channels: every bill verified and countersigned),
``openai_request`` (the plain ``openai`` SDK against any OpenAI-compatible server, the gateway
included) and the bare engine's, in ``serving.py``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.table import Table

from ._common import MODEL_NAME, BenchError, console, percentile, table

__all__ = [
    "PROMPTS",
    "LevelResult",
    "Request",
    "Timeline",
    "drive",
    "level_at",
    "levels",
    "levels_table",
    "messages",
    "openai_request",
    "rounds",
    "sdk_request",
    "summarize",
]

# Long-form asks, so greedy decoding rarely stops before max_tokens on any system.
PROMPTS = (
    "Write a long story about a lighthouse keeper who finds a message in a bottle.",
    "Explain in detail how a payment channel works, step by step.",
    "Describe a walk through a busy market in a large city, with many details.",
    "Write a detailed guide to planting a vegetable garden for beginners.",
    "Tell a long tale about a dragon who wants to learn to read.",
    "Explain at length why the sky is blue and why sunsets are red.",
    "Write a long letter from a sailor to his family about his voyage.",
    "Describe in detail the history of writing, from clay tablets to computers.",
)


@dataclass
class Timeline:
    """One request as its caller saw it: when it started, when each chunk of tokens arrived."""

    started: float
    stamps: list[float] = field(default_factory=list)
    tokens: int = 0

    @property
    def ended(self) -> float:
        return self.stamps[-1] if self.stamps else self.started

    @property
    def ttft(self) -> float:
        return self.stamps[0] - self.started if self.stamps else float("nan")

    @property
    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.stamps, self.stamps[1:], strict=False)]


Request = Callable[[int, int], Timeline]  # (stream, i) -> the request's timeline


@dataclass(frozen=True)
class LevelResult:
    system: str
    streams: int
    requests: int
    tokens: int
    wall_s: float
    ttft_p50_s: float
    ttft_p95_s: float
    itl_p50_s: float
    itl_p95_s: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s > 0 else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "tokens_per_s": self.tokens_per_s}


def summarize(system: str, streams: int, timelines: list[Timeline]) -> LevelResult:
    """Aggregate a level: tokens over the wall time from first start to last token."""
    wall = max(t.ended for t in timelines) - min(t.started for t in timelines)
    gaps = [g for t in timelines for g in t.gaps]
    ttfts = [t.ttft for t in timelines if not math.isnan(t.ttft)]
    return LevelResult(
        system=system,
        streams=streams,
        requests=len(timelines),
        tokens=sum(t.tokens for t in timelines),
        wall_s=wall,
        ttft_p50_s=percentile(ttfts, 50),
        ttft_p95_s=percentile(ttfts, 95),
        itl_p50_s=percentile(gaps, 50),
        itl_p95_s=percentile(gaps, 95),
    )


def level_at(
    results: dict[str, list[LevelResult]], system: str, streams: int
) -> LevelResult | None:
    """``system``'s level at ``streams`` streams, if it was measured."""
    return next((r for r in results.get(system, []) if r.streams == streams), None)


def levels_table(
    title: str, results: dict[str, list[LevelResult]], labels: dict[str, str], digits: int = 0
) -> Table:
    """One row per system and level: requests, tokens, tokens/s, TTFT and ITL percentiles."""
    rows = [
        [
            labels[r.system],
            r.streams,
            r.requests,
            r.tokens,
            f"{r.tokens_per_s:.1f}",
            f"{r.ttft_p50_s * 1e3:.{digits}f} / {r.ttft_p95_s * 1e3:.{digits}f}",
            f"{r.itl_p50_s * 1e3:.{digits}f} / {r.itl_p95_s * 1e3:.{digits}f}",
        ]
        for rs in results.values()
        for r in rs
    ]
    cols = ["system", "streams", "requests", "tokens", "tok/s", "TTFT p50/p95 ms", "ITL p50/p95 ms"]
    return table(title, cols, rows)


def messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]


def rounds(min_requests: int, streams: int) -> int:
    """Requests per stream so that a level runs at least ``min_requests``."""
    return max(1, math.ceil(min_requests / streams))


def drive(streams: int, rounds: int, request: Request) -> list[Timeline]:
    """``streams`` threads, each running ``rounds`` requests one after the other."""

    def stream(i: int) -> list[Timeline]:
        return [request(i, i + r) for r in range(rounds)]

    with ThreadPoolExecutor(max_workers=streams) as pool:
        return [t for lines in pool.map(stream, range(streams)) for t in lines]


def levels(
    system: str,
    label: str,
    streams: tuple[int, ...],
    min_requests: int,
    request: Request,
    warm: Callable[[int], Any] | None = None,
) -> list[LevelResult]:
    """One warm-up request (and ``warm(stream)`` for every stream), then each level in turn."""
    request(0, 0)  # warm-up (and, for the SDK, the tokenizer download and cache)
    if warm is not None:  # every stream's first request out of the measured levels
        drive(max(streams), 1, lambda stream, _i: warm(stream) or Timeline(0.0))
    out = []
    for n in streams:
        out.append(summarize(system, n, drive(n, rounds(min_requests, n), request)))
        report_level(label, out[-1])
    return out


def report_level(label: str, result: LevelResult) -> None:
    console.print(
        f"  {label:<24} {result.streams:>2} streams: "
        f"{result.tokens_per_s:6.1f} tok/s, TTFT p50 {result.ttft_p50_s * 1e3:6.0f} ms, "
        f"ITL p50 {result.itl_p50_s * 1e3:5.0f} ms ({result.tokens} tokens, "
        f"{result.requests} requests)"
    )


def sdk_request(clients: list[tuple[Any, Any]], max_tokens: int) -> Request:
    """Stream ``i``'s request through its own SDK client and channel; tokens as billed."""

    def request(stream: int, i: int) -> Timeline:
        client, channel = clients[stream]
        line = Timeline(time.perf_counter())
        chunks = client.chat.completions.create(
            model=MODEL_NAME,
            messages=messages(i),
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            channel=channel.channel_id,
        )
        for chunk in chunks:
            if chunk.choices and chunk.choices[0].delta.content:
                line.stamps.append(time.perf_counter())
        if chunks.tally is None:
            raise BenchError("the node's stream ended without a verified bill")
        line.tokens = chunks.tally.completion_tokens  # verified and countersigned
        return line

    return request


def openai_request(
    sdk: Any, model: str, max_tokens: int, *, usage_required: bool = False
) -> Request:
    """A streamed chat request through the ``openai`` SDK; tokens as the server's usage says.

    Without usage (``usage_required`` False), one token per content chunk.
    """
    create: Any = sdk.chat.completions.create

    def request(stream: int, i: int) -> Timeline:
        line = Timeline(time.perf_counter())
        chunks = create(
            model=model,
            messages=messages(i),
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        usage = None
        for chunk in chunks:
            if chunk.choices and chunk.choices[0].delta.content:
                line.stamps.append(time.perf_counter())
            usage = chunk.usage or usage
        if usage is None and usage_required:
            raise BenchError(f"the stream from {sdk.base_url} ended without usage")
        line.tokens = usage.completion_tokens if usage else len(line.stamps)
        return line

    return request
