"""Replicas: several node processes on one PostgreSQL ledger, next to one node on SQLite.

    python -m bench.replicas [--streams 4] [--max-tokens 32] [--channels 1000] [--quick]

(1) Throughput: one shared upstream engine (``transformers serve`` on the SmolLM2 weights),
    metered by (a) one ``tallystick-node serve --engine upstream`` on SQLite, then (b) two such
    replicas on one PostgreSQL ledger behind a round-robin front (``bench/_front.py``). The
    same SDK clients (one channel per stream, every bill verified and countersigned) drive
    both; the target is (b)/(a) aggregate output tokens/s >= 0.95.
(2) Ledger write latency per request: the writes the payment gate makes for one request
    (reserve, sign-and-store the record, store the receipt; each under the channel's lock),
    timed on SQLite (WAL, synchronous=FULL) and on PostgreSQL (a local cluster, fsync on).
(3) Settlement of 1,000 channels from a PostgreSQL ledger (``bench/growth.py``'s pass: real
    channels on anvil, one paid request each through the real app) in as many ``claimMany``
    transactions as from SQLite.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import growth, serving
from ._common import (
    MODEL_GGUF,
    MODEL_NAME,
    BenchError,
    Target,
    anvil,
    console,
    free_port,
    funded_account,
    percentile,
    save,
    show_targets,
    start_chain,
    table,
    wait_http,
)
from ._front import RoundRobinFront
from ._postgres import PgCluster

__all__ = ["Config", "run"]


@dataclass(frozen=True)
class Config:
    streams: int = 4
    max_tokens: int = 32
    min_requests: int = 8  # per configuration: each stream runs ceil(min / streams) requests
    ledger_requests: int = 400
    channels: int = 1000
    model: Path = MODEL_GGUF
    parts: tuple[str, ...] = ("throughput", "ledger", "settlement")


# --- (1) throughput over one shared upstream -------------------------------------------


@contextlib.contextmanager
def _upstream(config: Config, workdir: Path) -> Iterator[str]:
    """``transformers serve`` on the model's weights: the engine both setups share."""
    folder = serving.ensure_hf_model(config.model)
    port = free_port()
    cmd = [*serving._peer_command(), "serve", str(folder), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--continuous-batching"]
    hub_cache = workdir / "hf-hub"
    hub_cache.mkdir(exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub_cache)}
    url = f"http://127.0.0.1:{port}"
    with serving._process(cmd, workdir / "upstream.log", env) as proc:
        wait_http(f"{url}/v1/models", proc, serving.START_TIMEOUT_S, "transformers serve")
        yield url


def _node_cmd(url: str, chain: Any, upstream: str, config: Config, port: int) -> list[str]:
    cmd = [*serving._node_command(), "serve", "--rpc", url, "--escrow", chain.escrow.address]
    cmd += ["--registry", chain.registry.address, "--engine", "upstream"]
    cmd += ["--upstream-url", upstream, "--model", str(config.model), "--model-name", MODEL_NAME]
    cmd += ["--port", str(port), "--max-batch", str(config.streams), "--credit-requests", "1"]
    return [*cmd, "--settle-interval", "86400", "--log-level", "WARNING"]


def _measure(setup: str, replicas: int, upstream: str, config: Config, workdir: Path) -> Any:
    """Aggregate tokens/s of ``replicas`` nodes (1: SQLite; more: PostgreSQL and a front)."""
    cluster = PgCluster.start(fsync=True) if replicas > 1 else None
    with anvil() as url, contextlib.ExitStack() as stack:
        if cluster is not None:
            stack.callback(cluster.stop)
        chain = start_chain(url)
        provider = funded_account(chain.w3)
        env = {**os.environ, "TALLYSTICK_NODE_KEY": provider.key.hex(), "PYTHONUNBUFFERED": "1"}
        ports = [free_port() for _ in range(replicas)]
        ledger = cluster.new_database() if cluster is not None else None
        for i, port in enumerate(ports):
            cmd = _node_cmd(url, chain, upstream, config, port)
            cmd += ["--ledger", ledger] if ledger else ["--db", str(workdir / f"{setup}.db")]
            proc = stack.enter_context(serving._process(cmd, workdir / f"{setup}{i}.log", env))
            wait_http(f"http://127.0.0.1:{port}/health", proc, serving.START_TIMEOUT_S, setup)
        endpoint = f"http://127.0.0.1:{ports[0]}"
        if replicas > 1:
            front_port = free_port()
            front = RoundRobinFront(front_port, [f"http://127.0.0.1:{p}" for p in ports])
            stack.callback(front.close)
            endpoint = f"http://127.0.0.1:{front_port}"
        serving._list(chain, provider, endpoint, serving._context_length(config.model))
        clients = serving._clients(chain, provider, workdir / setup, config.streams)
        for client, _ in clients:
            stack.callback(client.close)
        cfg = serving.Config(
            levels=(config.streams,), max_tokens=config.max_tokens, min_requests=config.min_requests
        )
        console.print(f"  {setup}: {config.streams} streams through {endpoint}")
        # Reported as serving's "node" system: the same SDK path, timing and summary.
        (result,) = serving._http_levels("node", cfg, serving._node_request(clients, cfg))
        return result


def throughput(config: Config, workdir: Path) -> dict[str, Any]:
    with _upstream(config, workdir) as upstream:
        one = _measure("one node (SQLite)", 1, upstream, config, workdir)
        two = _measure("2 replicas (PostgreSQL)", 2, upstream, config, workdir)
    return {
        "one": one.to_json(),
        "two": two.to_json(),
        "ratio": two.tokens_per_s / one.tokens_per_s if one.tokens_per_s else None,
    }


# --- (2) ledger write latency ------------------------------------------------------------


def _records(n: int, channels: int) -> list[tuple[Any, Any]]:
    """``n`` requests over ``channels`` channels: (record, receipt) pairs, signed up front."""
    from eth_account import Account
    from tallystick.node import StoredReceipt, StoredRecord
    from tallystick.protocol import (
        ZERO_ROOT,
        Domain,
        Receipt,
        UsageRecord,
        hash_token_ids,
        sign_receipt,
        sign_usage_record,
    )

    domain = Domain(31337, "0x00000000000000000000000000000000000e5c40")
    provider, client = Account.from_key("0x" + "11" * 32), Account.from_key("0x" + "22" * 32)
    last: dict[bytes, Any] = {}
    out = []
    for i in range(n):
        cid = (i % channels).to_bytes(32, "big")
        prev = last.get(cid)
        rec = prev.signed.record if prev else None
        record = UsageRecord(
            cid, (rec.seq if rec else 0) + 1, 40, 32, hash_token_ids([i]), hash_token_ids([i]),
            (rec.input_tokens if rec else 0) + 40, (rec.output_tokens if rec else 0) + 32,
            prev.usage_root if prev else ZERO_ROOT,
        )  # fmt: skip
        stored = StoredRecord(sign_usage_record(provider, domain, record), [1] * 32, "m", 0.0)
        receipt = Receipt(cid, record.input_tokens, record.output_tokens, stored.usage_root)
        out.append((stored, StoredReceipt(sign_receipt(client, domain, receipt), record.seq, 0.0)))
        last[cid] = stored
    return out


def _per_request(ledger: Any, work: list[tuple[Any, Any]]) -> list[float]:
    """Seconds of ledger work per request, as the gate does it (three locked steps)."""
    times = []
    for stored, receipt in work:
        cid = stored.signed.record.channel_id
        started = time.perf_counter()
        with ledger.channel_lock(cid):  # reserve
            ledger.book(cid)
            rid = ledger.add_reservation(cid, "bench", 40, 32)
        with ledger.channel_lock(cid):  # finalize: release, read the chain's head, store
            ledger.drop_reservation(rid)
            ledger.book(cid)
            ledger.add_record(stored)
        with ledger.channel_lock(cid):  # the client's receipt
            ledger.book(cid)
            ledger.add_receipt(receipt)
        times.append(time.perf_counter() - started)
    return times


def ledger_latency(config: Config, workdir: Path) -> dict[str, Any]:
    from tallystick.node import PostgresLedger, SqliteLedger

    work = _records(config.ledger_requests, channels=16)
    out = {}
    sqlite = SqliteLedger(workdir / "latency.db")
    try:
        out["sqlite"] = _latency_row(_per_request(sqlite, work))
    finally:
        sqlite.close()
    cluster = PgCluster.start(fsync=True)
    try:
        pg = PostgresLedger(cluster.new_database())
        try:
            out["postgresql"] = _latency_row(_per_request(pg, work))
        finally:
            pg.close()
    finally:
        cluster.stop()
    return out


def _latency_row(times: list[float]) -> dict[str, float]:
    return {
        "requests": len(times),
        "p50_ms": percentile(times, 50) * 1e3,
        "p95_ms": percentile(times, 95) * 1e3,
        "requests_per_s": len(times) / sum(times),
    }


# --- (3) settlement from the PostgreSQL ledger --------------------------------------------


def settlement(config: Config) -> dict[str, Any]:
    (sqlite,) = growth.grow_channels((config.channels,))
    cluster = PgCluster.start(fsync=True)
    try:
        (pg,) = growth.grow_channels((config.channels,), ledger=cluster.new_database())
    finally:
        cluster.stop()
    keys = ("channels", "settle_s", "settle_txs", "settle_gas", "serve_s")
    return {"sqlite": {k: sqlite[k] for k in keys}, "postgresql": {k: pg[k] for k in keys}}


# --- the whole section ----------------------------------------------------------------


def run(config: Config | None = None) -> dict[str, Any]:
    config = config or Config()
    console.print(
        f"[bold]Replicas[/]: {config.streams} streams, max_tokens {config.max_tokens}; ledger "
        f"latency over {config.ledger_requests} requests; settlement of {config.channels} channels"
    )
    out: dict[str, Any] = {"config": {**config.__dict__, "model": str(config.model)}}
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="tallystick-replicas-") as tmp:
        for part, fn in (
            ("ledger", lambda: ledger_latency(config, Path(tmp))),
            ("settlement", lambda: settlement(config)),
            ("throughput", lambda: throughput(config, Path(tmp))),
        ):
            if part not in config.parts:
                continue
            try:
                out[part] = fn()
            except (BenchError, Exception) as exc:  # one part failing must not hide the rest
                errors[part] = f"{type(exc).__name__}: {exc}"
                console.print(f"  [red]{part} failed:[/] {errors[part]}")
    out["errors"] = errors
    targets = _targets(out)
    out["targets"] = [t.to_json() for t in targets]
    _print(out, targets)
    save("replicas", out)
    return out


def _targets(out: dict[str, Any]) -> list[Target]:
    ratio = out.get("throughput", {}).get("ratio")
    settle = out.get("settlement")
    same_txs = None
    if settle:
        same_txs = settle["postgresql"]["settle_txs"] / settle["sqlite"]["settle_txs"]
    return [
        Target("2 replicas (PostgreSQL) / one node tokens/s", ratio, 0.95, True, "x"),
        Target("claimMany txs for the pass: PostgreSQL / SQLite", same_txs, 1.0, False, "x"),
    ]


def _print(out: dict[str, Any], targets: list[Target]) -> None:
    if "ledger" in out:
        rows = [
            [k, v["requests"], f"{v['p50_ms']:.2f}", f"{v['p95_ms']:.2f}",
             f"{v['requests_per_s']:.0f}"]
            for k, v in out["ledger"].items()
        ]  # fmt: skip
        cols = ["ledger", "requests", "p50 ms/request", "p95 ms/request", "requests/s (serial)"]
        console.print(table("Ledger writes per request (reserve, record, receipt)", cols, rows))
    if "settlement" in out:
        rows = [
            [k, v["channels"], v["settle_txs"], f"{v['settle_gas']:,}", f"{v['settle_s']:.1f}"]
            for k, v in out["settlement"].items()
        ]
        cols = ["ledger", "channels", "claimMany txs", "gas", "pass s"]
        console.print(table("Settlement pass", cols, rows))
    if "throughput" in out:
        t = out["throughput"]
        rows = [
            [name, r["streams"], r["requests"], r["tokens"], f"{r['tokens_per_s']:.1f}",
             f"{r['ttft_p50_s'] * 1e3:.0f}"]
            for name, r in (("one node (SQLite)", t["one"]), ("2 replicas (PostgreSQL)", t["two"]))
        ]  # fmt: skip
        cols = ["setup", "streams", "requests", "tokens", "tok/s", "TTFT p50 ms"]
        console.print(table("One shared upstream engine (transformers serve)", cols, rows))
    show_targets("Replica targets", targets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--min-requests", type=int, default=8)
    parser.add_argument("--channels", type=int, default=1000)
    parser.add_argument("--ledger-requests", type=int, default=400)
    parser.add_argument("--parts", default="throughput,ledger,settlement")
    args = parser.parse_args()
    run(
        Config(
            streams=args.streams,
            max_tokens=args.max_tokens,
            min_requests=args.min_requests,
            channels=args.channels,
            ledger_requests=args.ledger_requests,
            parts=tuple(args.parts.split(",")),
        )
    )


if __name__ == "__main__":
    main()
