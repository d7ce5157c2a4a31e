"""Growth: the node's memory and settlement time with many open channels, and the client's
verification cost against prompt length.

    python -m bench.growth [--channels 100,1000] [--prompts 256,1000,4000,8000]

Channels: real channels opened on anvil with the real contracts; the real node app
(``create_app``: payment gate, SQLite ledger, settlement worker, ``EscrowChain``) serves one
paid request per channel over HTTP (in-process ASGI, ``FakeEngine``: the model is not what
grows), each countersigned and stored; then one settlement pass (``claimMany`` of every
receipt) is timed. Memory is this process's RSS growth from the started node.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tallystick.devnet import Market, funded_account, list_model, register_provider
from tallystick.protocol import new_salt

from ._common import console, rss_bytes, save, table
from ._setup import deployed
from .protocol_costs import Verifier, real_counter, time_per_call

__all__ = ["Config", "run"]

MODEL = "bench-model"
PRICES = (10**12, 4 * 10**12)
CLIENTS = 10  # channels are spread over this many client wallets
BLOCK_GAS_LIMIT = 30_000_000  # Ethereum mainnet's; the growth chain allows more (see below)
GROWTH_GAS_LIMIT = 200_000_000


@dataclass(frozen=True)
class Config:
    channels: tuple[int, ...] = (100, 1000)
    prompt_lengths: tuple[int, ...] = (256, 1000, 4000, 8000)
    verify_n: int = 20


# --- channels -------------------------------------------------------------------------


def _market(chain: Market, engine: Any) -> tuple[Any, bytes]:
    from tallystick.protocol import Prices

    provider = funded_account(chain.w3)
    register_provider(chain.deployment, provider, "http://127.0.0.1:1")
    model = list_model(
        chain.deployment,
        provider,
        MODEL,
        Prices(*PRICES),
        tokenizer_hash=engine.tokenizer_bundle.hash(),
        context_length=engine.context_length,
    )
    return provider, model


def open_many(chain: Market, clients: list[Any], provider: str, model: bytes, n: int) -> list[Any]:
    """Open ``n`` ETH channels spread over ``clients``: all sent, then mined; (client, id)."""
    escrow = chain.escrow.contract
    start_block = chain.w3.eth.block_number + 1
    hashes = []
    for i in range(n):
        client = clients[i % len(clients)]
        zero = "0x" + "00" * 20  # ETH, and no session key
        fn = escrow.functions.open(provider, model, zero, 10**16, zero, *PRICES, new_salt())
        nonce = chain.w3.eth.get_transaction_count(client.address, "pending")
        tx = fn.build_transaction(
            {"from": client.address, "value": 10**16, "nonce": nonce, "gas": 300_000}
        )
        hashes.append(
            chain.w3.eth.send_raw_transaction(client.sign_transaction(tx).raw_transaction)
        )
    for h in hashes:
        if chain.w3.eth.wait_for_transaction_receipt(h, poll_latency=0.01)["status"] != 1:
            raise RuntimeError("a channel open reverted")
    by_address = {c.address: c for c in clients}
    events = chain.escrow.channels_opened(start_block, provider=provider)
    return [(by_address[e.args["client"]], bytes(e.args["channelId"])) for e in events]


async def _serve_one(
    http: Any, domain: Any, client: Any, channel_id: bytes, last: dict[bytes, Any]
) -> None:
    """One paid request: signed (§4.3), chat, verify-free countersign, receipt posted.

    ``last`` holds each channel's last countersigned ``(seq, root)``.
    """
    import json

    from tallystick.protocol import (
        ZERO_ROOT,
        Receipt,
        RequestAuth,
        UsageRecord,
        sign_receipt,
        sign_request_auth,
    )

    seq, root = last.get(channel_id, (0, ZERO_ROOT))
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    raw = json.dumps(body).encode()
    path = "/v1/chat/completions"
    auth = RequestAuth.for_request(channel_id, seq + 1, root, "POST", path, raw, 60)
    headers = {"Authorization": sign_request_auth(client, domain, auth).header()}
    resp = await http.post(path, content=raw, headers=headers)
    if resp.status_code != 200:
        raise RuntimeError(f"the node refused a request: {resp.status_code} {resp.text[:200]}")
    r = UsageRecord.from_json(resp.json()["tallystick"]["record"])
    receipt = Receipt(r.channel_id, r.input_tokens, r.output_tokens, r.usage_root())
    posted = await http.post(
        "/v1/tally/receipts", json=sign_receipt(client, domain, receipt).to_json()
    )
    if posted.status_code != 200:
        raise RuntimeError(f"the node refused a receipt: {posted.status_code} {posted.text[:200]}")
    last[channel_id] = (r.seq, receipt.usage_root)


async def _grow(
    chain: Market, counts: tuple[int, ...], workdir: Path, ledger: str | None = None
) -> list[dict[str, Any]]:
    import httpx
    from tallystick.node import Settings, create_app
    from tallystick.node.engines import FakeEngine

    engine = FakeEngine(model_name=MODEL, reply="Paid per token.")
    provider, model = _market(chain, engine)
    clients = [funded_account(chain.w3) for _ in range(CLIENTS)]
    settings = Settings(
        rpc=chain.rpc,
        escrow=chain.escrow.address,
        registry=chain.registry.address,
        db=workdir / "node.db",
        ledger=ledger,
        settle_interval=86400,
        claim_gas_multiple=0,
        channel_cache_ttl=3600,
    )
    app = create_app(settings, engine=engine, account=provider, run_worker=False)
    channels: list[Any] = []
    served: dict[bytes, Any] = {}
    rows = []
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as http:
            # Warm-up: the first request builds caches the growth figures must not include;
            # its channel is the first of the open channels.
            channels += open_many(chain, clients[:1], provider.address, model, 1)
            first_client, first_channel = channels[0]
            await _serve_one(http, chain.escrow.domain, first_client, first_channel, served)
            base_rss = rss_bytes()
            for n in counts:
                rows.append(
                    await _stage(
                        chain,
                        app,
                        http,
                        clients,
                        provider,
                        model,
                        (channels, served),
                        n,
                        base_rss,
                        workdir,
                    )
                )
    return rows


async def _stage(
    chain: Market,
    app: Any,
    http: Any,
    clients: list[Any],
    provider: Any,
    model: bytes,
    book: tuple[list[Any], dict[bytes, Any]],
    n: int,
    base_rss: int,
    workdir: Path,
) -> dict[str, Any]:
    channels, served = book
    console.print(f"  {n} channels: opening {n - len(channels)} on anvil")
    started = time.perf_counter()
    channels += open_many(chain, clients, provider.address, model, n - len(channels))
    opened_s = time.perf_counter() - started
    console.print(f"  {n} channels: one paid request each through the node")
    started = time.perf_counter()
    for client, cid in channels:
        await _serve_one(http, chain.escrow.domain, client, cid, served)
    served_s = time.perf_counter() - started
    rss = rss_bytes()
    console.print(f"  {n} channels: settlement pass (claimMany of {n} receipts)")
    started = time.perf_counter()
    # The worker splits a pass into claimMany transactions that each fit its gas budget.
    outcomes = await app.state.node.worker.settle(force=True)
    settle_s = time.perf_counter() - started
    claimed = sum(len(o.claimed) for o in outcomes)
    gas = sum(o.gas_used for o in outcomes)
    if claimed != n:
        raise RuntimeError(f"the settlement pass claimed {claimed} of {n} receipts")
    return {
        "channels": n,
        "open_s": opened_s,
        "serve_s": served_s,
        "requests_per_s": n / served_s,
        "rss_growth_mib": (rss - base_rss) / 2**20,
        "rss_per_channel_kib": (rss - base_rss) / 2**10 / n,
        "ledger_mib": _ledger_bytes(workdir) / 2**20,
        "settle_s": settle_s,
        "settle_txs": len(outcomes),
        "settle_gas": gas,
        "settle_gas_per_receipt": gas / n,
        "fits_30m_block": all(o.gas_used <= BLOCK_GAS_LIMIT for o in outcomes),
    }


def _ledger_bytes(workdir: Path) -> int:
    # The SQLite file plus its write-ahead log (WAL mode: recent writes live in -wal).
    return sum(p.stat().st_size for p in workdir.glob("node.db*"))


def grow_channels(counts: tuple[int, ...], ledger: str | None = None) -> list[dict[str, Any]]:
    """``ledger``: a PostgreSQL URL for the node's ledger (default: SQLite in a temp folder)."""
    # A 1,000-receipt claimMany needs more gas than a 30M block: the chain allows it so the
    # pass can be timed, and the table says whether it would fit a mainnet-sized block.
    with deployed(gas_limit=GROWTH_GAS_LIMIT) as chain, tempfile.TemporaryDirectory() as tmp:
        return asyncio.run(_grow(chain, counts, Path(tmp), ledger))


# --- verification vs prompt length ----------------------------------------------------


def verification_growth(counter: Any, lengths: tuple[int, ...], n: int) -> list[dict[str, Any]]:
    rows = []
    for length in lengths:
        verifier = Verifier(counter, length)
        figures = time_per_call(verifier.verify, n)
        count = time_per_call(verifier.own_count, n)
        rows.append(
            {
                "prompt_tokens": len(verifier.prompt_ids),
                **figures,
                "own_count_p50_ms": count["p50_ms"],
            }
        )
    return rows


def run(config: Config | None = None, *, counter: Any = None) -> dict[str, Any]:
    """Measure, print and save ``growth.json``."""
    config = config or Config()
    console.print("[bold]Growth[/]: channels (anvil, real node app) and prompt length")
    channels = grow_channels(config.channels)
    verify = verification_growth(counter or real_counter(), config.prompt_lengths, config.verify_n)
    _print(channels, verify)
    result = {"config": config.__dict__, "channels": channels, "verification": verify}
    save("growth", result)
    return result


def _print(channels: list[dict[str, Any]], verify: list[dict[str, Any]]) -> None:
    rows = [
        [
            c["channels"],
            f"{c['rss_growth_mib']:.1f}",
            f"{c['rss_per_channel_kib']:.1f}",
            f"{c['ledger_mib']:.2f}",
            f"{c['requests_per_s']:.0f}",
            f"{c['settle_s']:.2f}",
            f"{c['settle_gas']:,} in {c['settle_txs']} tx",
            "yes" if c["fits_30m_block"] else "NO",
        ]
        for c in channels
    ]
    cols = ["open channels", "RSS growth MiB", "KiB/channel", "ledger MiB", "paid req/s",
            "settle pass s", "claimMany gas", "each tx fits 30M"]  # fmt: skip
    console.print(table("Node growth with open channels", cols, rows))
    rows = [
        [v["prompt_tokens"], f"{v['p50_ms']:.2f}", f"{v['p95_ms']:.2f}",
         f"{v['own_count_p50_ms']:.2f}"]
        for v in verify
    ]  # fmt: skip
    cols = ["prompt tokens", "verify p50 ms", "verify p95 ms", "own count p50 ms"]
    console.print(table("Client verification per request vs prompt length", cols, rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", default="100,1000")
    parser.add_argument("--prompts", default="256,1000,4000,8000")
    args = parser.parse_args()
    run(
        Config(
            channels=tuple(int(x) for x in args.channels.split(",")),
            prompt_lengths=tuple(int(x) for x in args.prompts.split(",")),
        )
    )


if __name__ == "__main__":
    main()
