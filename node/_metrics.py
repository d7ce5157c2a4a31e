"""Prometheus metrics of one app (its own ``CollectorRegistry``; no process globals)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "NodeMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class NodeMetrics:
    """Latency histograms, token counters, engine gauges, requests and earnings."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.ttft = Histogram(
            "tallystick_time_to_first_token_seconds",
            "Time to first token.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "tallystick_inter_token_latency_seconds",
            "Gap between consecutive tokens.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "tallystick_request_latency_seconds",
            "End-to-end request latency.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "tallystick_prompt_tokens", "Prompt tokens metered.", ["model"], registry=r
        )
        self.generation_tokens = Counter(
            "tallystick_generation_tokens", "Completion tokens metered.", ["model"], registry=r
        )
        self.requests = Counter(
            "tallystick_requests",
            "HTTP requests by route and status.",
            ["route", "status"],
            registry=r,
        )
        self.queue_depth = Gauge("tallystick_queue_depth", "Requests waiting.", registry=r)
        self.batch_size = Gauge("tallystick_batch_size", "Requests running.", registry=r)
        self.earnings_claimed = Gauge(
            "tallystick_earnings_claimed",
            "Earnings claimed on-chain (base units).",
            ["token"],
            registry=r,
        )
        self.earnings_unclaimed = Gauge(
            "tallystick_earnings_unclaimed",
            "Countersigned but not yet claimed earnings (base units).",
            ["token"],
            registry=r,
        )
        self.claims = Counter(
            "tallystick_claims", "claimMany transactions by outcome.", ["outcome"], registry=r
        )

    def watch_engine(self, stats: Callable[[], dict[str, int]]) -> None:
        """Read queue depth and batch size from the engine at scrape time."""
        self.queue_depth.set_function(lambda: float(stats().get("queued", 0)))
        self.batch_size.set_function(lambda: float(stats().get("running", 0)))

    def watch_rpc(self, failures: Callable[[], dict[tuple[str, str], int]]) -> None:
        """``tallystick_rpc_failures_total{rpc, kind}``, read from the chain at scrape time."""
        self.registry.register(_RpcFailures(failures))

    def observe_request(
        self,
        model: str,
        prompt: int,
        completion: int,
        ttft: float,
        gaps: tuple[float, ...],
        total: float,
    ) -> None:
        """One metered request."""
        self.prompt_tokens.labels(model).inc(prompt)
        self.generation_tokens.labels(model).inc(completion)
        self.ttft.labels(model).observe(ttft)
        for gap in gaps:
            self.itl.labels(model).observe(gap)
        self.e2e.labels(model).observe(total)

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)


class _RpcFailures(Collector):
    def __init__(self, failures: Callable[[], dict[tuple[str, str], int]]) -> None:
        self._failures = failures

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "tallystick_rpc_failures",
            "Chain RPC requests that failed at the transport, per RPC URL and kind.",
            labels=["rpc", "kind"],
        )
        for (label, kind), count in sorted(self._failures().items()):
            family.add_metric([label, kind], count)
        yield family
