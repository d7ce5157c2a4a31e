"""The gateway's cost: the same node and model, called through the SDK directly and through
``tallystick gateway`` by the plain ``openai`` SDK, side by side in one run.

    python -m bench.gateway [--levels 1,8] [--max-tokens 64]

(d) ``direct``: the client SDK on its own channels (one per stream), every bill verified and
    countersigned in the calling process: the ``node`` system of ``bench/serving.py``;
(e) ``gateway``: a ``tallystick gateway`` process in front of the same node, which opens its
    channels on demand (warmed up first) and verifies and countersigns the same way; the
    caller is ``openai.OpenAI(base_url=..., api_key=...)``.

Each level runs direct, gateway, gateway, direct (A B B A), so drift in the shared machine's
load hits both systems alike.
Targets: added TTFT p50 at one stream <= 10 ms; tokens/s (e)/(d) >= 0.95x at 1 and 8 streams.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tallystick.devnet import free_port, funded_account, gguf_context_length

from ._common import MODEL_GGUF, MODEL_NAME, Target, console, save, show_targets
from ._load import (
    LevelResult,
    Request,
    Timeline,
    drive,
    level_at,
    levels_table,
    openai_request,
    rounds,
    sdk_request,
    summarize,
)
from ._setup import Bench, list_served, market, sdk_clients, serve_node, start_server

__all__ = ["Config", "run"]

LABELS = {"direct": "(d) SDK direct", "gateway": "(e) openai → gateway"}
BUDGET = 10**19


@dataclass(frozen=True)
class Config:
    levels: tuple[int, ...] = (1, 8)
    max_tokens: int = 64
    min_requests: int = 4
    model: Path = MODEL_GGUF


def run(config: Config | None = None) -> dict[str, Any]:
    """Measure both systems, print, save ``gateway.json``; returns the figures."""
    config = config or Config()
    console.print(
        f"[bold]Gateway[/] vs SDK direct, {MODEL_NAME}: levels {config.levels}, max_tokens "
        f"{config.max_tokens}, greedy"
    )
    with tempfile.TemporaryDirectory(prefix="tallystick-bench-gw-") as tmp:
        results = _measure(config, Path(tmp))
    targets = _targets(results)
    _print(results, targets)
    out = {
        "config": {**asdict(config), "model": str(config.model)},
        "levels": {s: [r.to_json() for r in rs] for s, rs in results.items()},
        "added_ttft_p50_s": _added_ttft(results),
        "targets": [t.to_json() for t in targets],
    }
    save("gateway", out)
    return out


def _measure(config: Config, workdir: Path) -> dict[str, list[LevelResult]]:
    args = ["--max-batch", str(max(config.levels)), "--credit-requests", "1"]
    with market(workdir) as bench:
        node = serve_node(bench, model=config.model, args=args)
        list_served(bench, node.url, gguf_context_length(config.model))
        with sdk_clients(bench, max(config.levels)) as clients:
            direct = sdk_request(clients, config.max_tokens)
            with _gateway(bench) as (base_url, key):
                import openai

                sdk = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=600)
                via = openai_request(sdk, MODEL_NAME, config.max_tokens, usage_required=True)
                return _levels(config, direct, via)


@contextlib.contextmanager
def _gateway(bench: Bench) -> Iterator[tuple[str, str]]:
    """``tallystick gateway`` as a process with a funded wallet and one key: (base URL, key)."""
    market = bench.market
    wallet = funded_account(market.w3)
    port = free_port()
    base = [sys.executable, "-c", "from tallystick.client.cli import main; main()"]
    base += ["--rpc", market.rpc, "--registry", market.registry.address]
    base += ["--escrow", market.escrow.address, "--store", str(bench.workdir / "gateway.db")]
    env = {**os.environ, "TALLYSTICK_KEY": wallet.key.hex(), "PYTHONUNBUFFERED": "1"}
    key = subprocess.run(
        [*base, "gateway", "keys", "create", "bench"],
        capture_output=True, text=True, env=env, check=True,
    ).stdout.strip()  # fmt: skip
    cmd = [*base, "gateway", "--port", str(port), "--budget", str(BUDGET)]
    url = f"http://127.0.0.1:{port}"
    log = bench.workdir / "gateway.log"
    proc = start_server(bench.procs, "tallystick gateway", cmd, f"{url}/health", log, env)
    try:
        yield url + "/v1", key
    finally:
        bench.procs.stop(proc)


def _levels(config: Config, direct: Request, via: Request) -> dict[str, list[LevelResult]]:
    direct(0, 0)  # warm-up: tokenizers, connections
    top = max(config.levels)
    drive(top, 1, via)  # warm-up: the gateway opens its channels and measures the node
    results: dict[str, list[LevelResult]] = {"direct": [], "gateway": []}
    systems = {"direct": direct, "gateway": via}
    for n in config.levels:
        # A, B, B, A: a drift in the machine's load during the level hits both systems alike.
        timelines: dict[str, list[Timeline]] = {"direct": [], "gateway": []}
        for system in ("direct", "gateway", "gateway", "direct"):
            timelines[system] += drive(n, rounds(config.min_requests, n), systems[system])
        for system, lines in timelines.items():
            result = _summarize_halves(system, n, lines)
            results[system].append(result)
            console.print(
                f"  {LABELS[system]:<22} {n:>2} streams: {result.tokens_per_s:6.1f} tok/s, "
                f"TTFT p50 {result.ttft_p50_s * 1e3:6.1f} ms ({result.requests} requests)"
            )
    return results


def _summarize_halves(system: str, n: int, lines: list[Timeline]) -> LevelResult:
    """Two runs of one level: tokens/s is the tokens over the two runs' summed wall times."""
    half = len(lines) // 2
    first, second = summarize(system, n, lines[:half]), summarize(system, n, lines[half:])
    both = summarize(system, n, lines)
    return LevelResult(
        system=system,
        streams=n,
        requests=both.requests,
        tokens=both.tokens,
        wall_s=first.wall_s + second.wall_s,
        ttft_p50_s=both.ttft_p50_s,
        ttft_p95_s=both.ttft_p95_s,
        itl_p50_s=both.itl_p50_s,
        itl_p95_s=both.itl_p95_s,
    )


def _added_ttft(results: dict[str, list[LevelResult]]) -> float | None:
    a, b = level_at(results, "gateway", 1), level_at(results, "direct", 1)
    return None if a is None or b is None else a.ttft_p50_s - b.ttft_p50_s


def _targets(results: dict[str, list[LevelResult]]) -> list[Target]:
    added = _added_ttft(results)
    out = [
        Target(
            "gateway added TTFT p50 (1 stream)",
            None if added is None else added * 1e3,
            10.0,
            False,
            "ms",
        )
    ]
    for n in sorted({r.streams for rs in results.values() for r in rs}):
        a, b = level_at(results, "gateway", n), level_at(results, "direct", n)
        ratio = a.tokens_per_s / b.tokens_per_s if a and b and b.tokens_per_s else None
        out.append(Target(f"gateway/direct tokens/s at {n} streams", ratio, 0.95, True, "x"))
    return out


def _print(results: dict[str, list[LevelResult]], targets: list[Target]) -> None:
    console.print(levels_table("Gateway vs SDK direct", results, LABELS, digits=1))
    show_targets("Gateway targets", targets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,8")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--min-requests", type=int, default=4)
    args = parser.parse_args()
    levels = tuple(int(x) for x in args.levels.split(","))
    run(Config(levels=levels, max_tokens=args.max_tokens, min_requests=args.min_requests))


if __name__ == "__main__":
    main()
