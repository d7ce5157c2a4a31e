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
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tallystick.devnet import free_port, gguf_context_length

from . import growth
from ._common import (
    MODEL_GGUF,
    BenchError,
    Target,
    console,
    percentile,
    save,
    show_targets,
    table,
)
from ._front import RoundRobinFront
from ._load import levels, sdk_request
from ._postgres import PgCluster
from ._setup import list_served, market, sdk_clients, serve_node, transformers_serve

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


def _measure(setup: str, replicas: int, upstream: str, config: Config, workdir: Path) -> Any:
    """Aggregate tokens/s of ``replicas`` nodes (1: SQLite; more: PostgreSQL and a front)."""
    cluster = PgCluster.start(fsync=True) if replicas > 1 else None
    with market(workdir / setup) as bench, contextlib.ExitStack() as stack:
        bench.workdir.mkdir(parents=True, exist_ok=True)
        if cluster is not None:
            stack.callback(cluster.stop)
        ledger = cluster.new_database() if cluster is not None else None
        args = ["--engine", "upstream", "--upstream-url", upstream]
        args += ["--max-batch", str(config.streams), "--credit-requests", "1"]
        nodes = [
            serve_node(bench, model=config.model, args=args, name=f"replica{i}", ledger=ledger)
            for i in range(replicas)
        ]
        endpoint = nodes[0].url
        if replicas > 1:
            front_port = free_port()
            front = RoundRobinFront(front_port, [node.url for node in nodes])
            stack.callback(front.close)
            endpoint = f"http://127.0.0.1:{front_port}"
        list_served(bench, endpoint, gguf_context_length(config.model))
        clients = stack.enter_context(sdk_clients(bench, config.streams))
        console.print(f"  {setup}: {config.streams} streams through {endpoint}")
        # Reported as serving's "node" system: the same SDK path, timing and summary.
        request = sdk_request(clients, config.max_tokens)
        (result,) = levels("node", setup, (config.streams,), config.min_requests, request)
        return result


def throughput(config: Config, workdir: Path) -> dict[str, Any]:
    with transformers_serve(config.model, workdir) as (upstream, _):
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
