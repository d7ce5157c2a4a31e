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
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ._common import (
    MODEL_GGUF,
    MODEL_NAME,
    BenchError,
    Target,
    anvil,
    console,
    free_port,
    funded_account,
    save,
    show_targets,
    start_chain,
    table,
    wait_http,
)
from .serving import (
    START_TIMEOUT_S,
    LevelResult,
    Timeline,
    _clients,
    _context_length,
    _drive,
    _list,
    _messages,
    _node_command,
    _node_request,
    _process,
    _rounds,
    _tail,
    summarize,
)
from .serving import Config as ServingConfig

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
    serving = ServingConfig(
        levels=config.levels, max_tokens=config.max_tokens, min_requests=config.min_requests
    )
    with anvil() as url:
        chain = start_chain(url)
        provider = funded_account(chain.w3)
        port = free_port()
        endpoint = f"http://127.0.0.1:{port}"
        cmd = [*_node_command(), "serve", "--rpc", url, "--escrow", chain.escrow.address]
        cmd += ["--registry", chain.registry.address, "--db", str(workdir / "node.db")]
        cmd += ["--model", str(config.model), "--model-name", MODEL_NAME, "--port", str(port)]
        cmd += ["--max-batch", str(max(config.levels)), "--credit-requests", "1"]
        cmd += ["--settle-interval", "86400", "--log-level", "WARNING"]
        env = {**os.environ, "TALLYSTICK_NODE_KEY": provider.key.hex(), "PYTHONUNBUFFERED": "1"}
        log = workdir / "node.log"
        console.print(f"  starting tallystick-node serve on {endpoint} (log {log})")
        with _process(cmd, log, env) as proc:
            try:
                wait_http(f"{endpoint}/health", proc, START_TIMEOUT_S, "tallystick-node")
            except BenchError:
                console.print(_tail(log))
                raise
            _list(chain, provider, endpoint, _context_length(config.model))
            clients = _clients(chain, provider, workdir, max(config.levels))
            try:
                direct = _node_request(clients, serving)
                with _gateway(chain, url, workdir) as (base_url, key):
                    via = _gateway_request(base_url, key, config)
                    return _levels(config, serving, direct, via)
            finally:
                for client, _ in clients:
                    client.close()


class _gateway:
    """``tallystick gateway`` as a subprocess with a funded wallet and one key."""

    def __init__(self, chain: Any, url: str, workdir: Path) -> None:
        wallet = funded_account(chain.w3)
        self.port = free_port()
        self.log = workdir / "gateway.log"
        self.base = [sys.executable, "-c", "from tallystick.client.cli import main; main()"]
        self.base += ["--rpc", url, "--registry", chain.registry.address]
        self.base += ["--escrow", chain.escrow.address, "--store", str(workdir / "gateway.db")]
        self.env = {**os.environ, "TALLYSTICK_KEY": wallet.key.hex(), "PYTHONUNBUFFERED": "1"}
        self.ctx: Any = None

    def __enter__(self) -> tuple[str, str]:
        import subprocess

        key = subprocess.run(
            [*self.base, "gateway", "keys", "create", "bench"],
            capture_output=True, text=True, env=self.env, check=True,
        ).stdout.strip()  # fmt: skip
        cmd = [*self.base, "gateway", "--port", str(self.port), "--budget", str(BUDGET)]
        self.ctx = _process(cmd, self.log, self.env)
        proc = self.ctx.__enter__()
        url = f"http://127.0.0.1:{self.port}"
        try:
            wait_http(f"{url}/health", proc, 60, "tallystick gateway")
        except BenchError:
            console.print(_tail(self.log))
            raise
        return url + "/v1", key

    def __exit__(self, *exc: object) -> None:
        self.ctx.__exit__(*exc)


def _gateway_request(base_url: str, key: str, config: Config) -> Callable[[int, int], Timeline]:
    import openai

    sdk = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=600)
    create: Any = sdk.chat.completions.create

    def request(stream: int, i: int) -> Timeline:
        line = Timeline(time.perf_counter())
        chunks = create(
            model=MODEL_NAME,
            messages=_messages(i),
            max_tokens=config.max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in chunks:
            if chunk.choices and chunk.choices[0].delta.content:
                line.stamps.append(time.perf_counter())
            if chunk.usage is not None:
                line.tokens = chunk.usage.completion_tokens
        if not line.tokens:
            raise BenchError("the gateway's stream ended without usage")
        return line

    return request


def _levels(
    config: Config,
    serving: ServingConfig,
    direct: Callable[[int, int], Timeline],
    via: Callable[[int, int], Timeline],
) -> dict[str, list[LevelResult]]:
    direct(0, 0)  # warm-up: tokenizers, connections
    top = max(config.levels)
    _drive(top, 1, via)  # warm-up: the gateway opens its channels and measures the node
    results: dict[str, list[LevelResult]] = {"direct": [], "gateway": []}
    systems = {"direct": direct, "gateway": via}
    for n in config.levels:
        # A, B, B, A: a drift in the machine's load during the level hits both systems alike.
        timelines: dict[str, list[Timeline]] = {"direct": [], "gateway": []}
        for system in ("direct", "gateway", "gateway", "direct"):
            timelines[system] += _drive(n, _rounds(serving, n), systems[system])
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


def _at(results: dict[str, list[LevelResult]], system: str, n: int) -> LevelResult | None:
    return next((r for r in results.get(system, []) if r.streams == n), None)


def _added_ttft(results: dict[str, list[LevelResult]]) -> float | None:
    a, b = _at(results, "gateway", 1), _at(results, "direct", 1)
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
        a, b = _at(results, "gateway", n), _at(results, "direct", n)
        ratio = a.tokens_per_s / b.tokens_per_s if a and b and b.tokens_per_s else None
        out.append(Target(f"gateway/direct tokens/s at {n} streams", ratio, 0.95, True, "x"))
    return out


def _print(results: dict[str, list[LevelResult]], targets: list[Target]) -> None:
    rows = [
        [
            LABELS[r.system],
            r.streams,
            r.requests,
            r.tokens,
            f"{r.tokens_per_s:.1f}",
            f"{r.ttft_p50_s * 1e3:.1f} / {r.ttft_p95_s * 1e3:.1f}",
            f"{r.itl_p50_s * 1e3:.1f} / {r.itl_p95_s * 1e3:.1f}",
        ]
        for rs in results.values()
        for r in rs
    ]
    cols = ["system", "streams", "requests", "tokens", "tok/s", "TTFT p50/p95 ms", "ITL p50/p95 ms"]
    console.print(table("Gateway vs SDK direct", cols, rows))
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
