"""Prometheus metrics of one app (its own ``CollectorRegistry``; no process globals).

Where a metric means what one of vLLM's means, it has vLLM's name and its ``model_name``
label (``vllm:generation_tokens_total``, ``vllm:time_to_first_token_seconds``, …), so a
dashboard built for vLLM reads a node (and a node in front of vLLM is told apart by the
``job``/``instance`` labels, or relabelled). The money and chain metrics are ``tallystick_*``.
docs/grafana/tallystick.json is a Grafana dashboard of them; a test checks that every
metric it queries is in a node's ``/metrics``.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from tallystick.protocol import ChannelState, ChannelStatus

__all__ = ["CONTENT_TYPE", "NodeMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# ``*_created`` series double every counter and histogram for a timestamp nobody graphs.
disable_created_metrics()

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5)


class NodeMetrics:
    """Latency histograms, token counters, engine gauges, requests, revenue and earnings."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Time to first token.",
            ["model_name"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "vllm:inter_token_latency_seconds",
            "Gap between consecutive tokens.",
            ["model_name"],
            buckets=_ITL_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "End-to-end request latency.",
            ["model_name"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Prompt tokens metered.", ["model_name"], registry=r
        )
        self.generation_tokens = Counter(
            "vllm:generation_tokens",
            "Completion tokens, counted as they stream.",
            ["model_name"],
            registry=r,
        )
        self.request_success = Counter(
            "vllm:request_success",
            "Requests that finished with a signed record, by finish reason.",
            ["model_name", "finished_reason"],
            registry=r,
        )
        self.requests = Counter(
            "tallystick_requests",
            "HTTP requests by route and status (requests to no route are not counted).",
            ["route", "status"],
            registry=r,
        )
        self.revenue = Counter(
            "tallystick_revenue",
            "Cost of the tokens served, at the channel's prices, capped at its deposit "
            "(base units of the payment token).",
            ["model_name", "token"],
            registry=r,
        )
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
        self.receipts_skipped = Counter(
            "tallystick_receipts_skipped",
            "Receipts the escrow skipped in a claim (a dispute: the receipt did not pay).",
            registry=r,
        )

    def watch_engine(self, model: str, stats: Callable[[], dict[str, int]]) -> None:
        """``vllm:num_requests_running`` / ``_waiting``, read from the engine at scrape time."""
        self.registry.register(_EngineGauges(model, stats))

    def watch_rpc(
        self,
        failures: Callable[[], dict[tuple[str, str], int]],
        errors: Callable[[], dict[tuple[str, str], int]] = dict,
    ) -> None:
        """``tallystick_rpc_failures_total{rpc, kind}`` (transport) and
        ``tallystick_rpc_errors_total{rpc, code}`` (JSON-RPC error answers), at scrape time."""
        self.registry.register(_RpcFailures(failures, errors))

    def watch_channels(self, channels: Callable[[], list[ChannelState]]) -> None:
        """Channels by status, open deposits and disputes, read from the ledger at scrape time."""
        self.registry.register(_ChannelGauges(channels))

    def tokens_streamed(self, model: str, count: int) -> None:
        """Completion ids as the engine hands them over (not at the end of the request)."""
        self.generation_tokens.labels(model).inc(count)

    def observe_request(
        self,
        model: str,
        prompt: int,
        ttft: float,
        gaps: tuple[float, ...],
        total: float,
        finish_reason: str | None,
        revenue: tuple[str, int] | None = None,
    ) -> None:
        """One metered request; ``revenue`` is (token, base units) it added to its channel."""
        self.prompt_tokens.labels(model).inc(prompt)
        self.ttft.labels(model).observe(ttft)
        for gap in gaps:
            self.itl.labels(model).observe(gap)
        self.e2e.labels(model).observe(total)
        self.request_success.labels(model, finish_reason or "abort").inc()
        if revenue is not None:
            self.revenue.labels(model, revenue[0]).inc(revenue[1])

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)


class _EngineGauges(Collector):
    def __init__(self, model: str, stats: Callable[[], dict[str, int]]) -> None:
        self._model = model
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        for name, key, text in (
            ("vllm:num_requests_running", "running", "Requests generating now."),
            ("vllm:num_requests_waiting", "queued", "Requests waiting for a batch slot."),
        ):
            family = GaugeMetricFamily(name, text, labels=["model_name"])
            family.add_metric([self._model], float(stats.get(key, 0)))
            yield family


class _RpcFailures(Collector):
    def __init__(
        self,
        failures: Callable[[], dict[tuple[str, str], int]],
        errors: Callable[[], dict[tuple[str, str], int]],
    ) -> None:
        self._failures = failures
        self._errors = errors

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "tallystick_rpc_failures",
            "Chain RPC requests that failed at the transport, per RPC URL and kind.",
            labels=["rpc", "kind"],
        )
        for (label, kind), count in sorted(self._failures().items()):
            family.add_metric([label, kind], count)
        yield family
        errors = CounterMetricFamily(
            "tallystick_rpc_errors",
            "JSON-RPC error answers of the chain RPC (reverts included), per RPC URL and code.",
            labels=["rpc", "code"],
        )
        for (label, code), count in sorted(self._errors().items()):
            errors.add_metric([label, code], count)
        yield errors


class _ChannelGauges(Collector):
    def __init__(self, channels: Callable[[], list[ChannelState]]) -> None:
        self._channels = channels

    def collect(self) -> Iterator[Metric]:
        channels = self._channels()
        by_status = Tally(ChannelStatus(int(c.status)).name.lower() for c in channels)
        family = GaugeMetricFamily(
            "tallystick_channels", "Channels this node knows, by status.", labels=["status"]
        )
        for status in ("open", "closing", "closed"):
            family.add_metric([status], by_status.get(status, 0))
        yield family
        deposits = GaugeMetricFamily(
            "tallystick_open_deposits",
            "Deposits of open and closing channels, less what they paid (base units).",
            labels=["token"],
        )
        left: Tally[str] = Tally()
        for c in channels:
            if c.status in (ChannelStatus.OPEN, ChannelStatus.CLOSING):
                left[c.token] += c.deposit - c.paid
        for token, amount in sorted(left.items()):
            deposits.add_metric([token], amount)
        yield deposits
        yield GaugeMetricFamily(
            "tallystick_disputes",
            "Unilateral closes under way: the client called requestClose; claim before the "
            "deadline.",
            value=by_status.get("closing", 0),
        )
