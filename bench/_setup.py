"""The market a section measures, set up through ``tallystick.devnet``: anvil, the contracts, a
funded provider, ``tallystick-node serve`` processes with the model listed, SDK clients on
channels of their own, and any other server a section compares (as a process, health-checked).

    with market(workdir) as bench:
        node = serve_node(bench, model=config.model, args=["--max-batch", "8"])
        list_served(bench, node.url, gguf_context_length(config.model))
        clients = sdk_clients(bench, 8)

Every process runs in its own process group and is stopped when the ``with`` ends; a server
that does not come up prints its log's last lines and raises ``BenchError``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from tallystick.devnet import (
    DevnetError,
    Market,
    Node,
    Proc,
    Processes,
    deploy_market,
    free_port,
    funded_account,
    list_model,
    register_provider,
    served_tokenizer_hash,
    start_anvil,
    start_node,
    wait_http,
)
from tallystick.protocol import Prices

from ._common import MODEL_GGUF, MODEL_NAME, BenchError, console

__all__ = [
    "DEPOSIT",
    "PRICES",
    "START_TIMEOUT_S",
    "Bench",
    "deployed",
    "ensure_hf_model",
    "list_served",
    "market",
    "sdk_clients",
    "serve_node",
    "start_server",
    "transformers_serve",
]

START_TIMEOUT_S = 420.0  # loading the GGUF takes ~45 s on an idle 2-core box; more when busy
PRICES = Prices(input_per_m=10**12, output_per_m=4 * 10**12)  # wei per million tokens
DEPOSIT = 10**17


@dataclass(frozen=True)
class Bench:
    """A section's devnet: its processes, the deployed market, the provider, a work folder."""

    procs: Processes
    market: Market
    provider: LocalAccount
    workdir: Path


@contextlib.contextmanager
def deployed(procs: Processes | None = None, gas_limit: int | None = None) -> Iterator[Market]:
    """A fresh anvil (in ``procs``, or its own) with the contracts deployed; stopped on exit."""
    with contextlib.ExitStack() as stack:
        procs = procs or stack.enter_context(Processes())
        try:
            chain = start_anvil(procs, gas_limit=gas_limit)
        except DevnetError as exc:
            raise BenchError(str(exc)) from exc
        yield deploy_market(chain.url)


@contextlib.contextmanager
def market(workdir: Path, gas_limit: int | None = None) -> Iterator[Bench]:
    """``deployed()`` with a funded provider, and the processes a section starts on it."""
    with Processes() as procs, deployed(procs, gas_limit) as chain:
        yield Bench(procs, chain, funded_account(chain.w3), workdir)


def start_server(
    procs: Processes,
    name: str,
    cmd: Sequence[str],
    health: str,
    log: Path,
    env: Mapping[str, str] | None = None,
) -> Proc:
    """Any server (llama-server, ``transformers serve``, the gateway) until ``health`` answers."""
    console.print(f"  starting {name} (log {log})")
    proc = procs.start(name, cmd, log, env)
    try:
        wait_http(health, proc, START_TIMEOUT_S, name)
    except DevnetError as exc:
        console.print(proc.tail())
        raise BenchError(str(exc)) from exc
    return proc


def serve_node(
    bench: Bench,
    *,
    model: Path,
    args: Sequence[str] = (),
    name: str = "node",
    ledger: str | None = None,
) -> Node:
    """``tallystick-node serve`` of ``model`` as ``MODEL_NAME`` on the bench's market.

    Its ledger is ``<workdir>/<name>.db``, or ``ledger`` (a PostgreSQL URL) for replicas;
    settlement is left to the section (``--settle-interval 86400``).
    """
    log = bench.workdir / f"{name}.log"
    flags = ["--model", str(model), "--model-name", MODEL_NAME, "--settle-interval", "86400"]
    flags += ["--log-level", "WARNING", *(["--ledger", ledger] if ledger else []), *args]
    console.print(f"  starting tallystick-node serve ({name}, log {log})")
    try:
        return start_node(
            bench.procs,
            rpc=bench.market.rpc,
            escrow=bench.market.escrow.address,
            registry=bench.market.registry.address,
            db=None if ledger else bench.workdir / f"{name}.db",
            key=bench.provider.key.hex(),
            args=flags,
            log=log,
            timeout_s=START_TIMEOUT_S,
            name=name,
        )
    except DevnetError as exc:
        proc = next((p for p in bench.procs.procs if p.name == name), None)
        console.print(proc.tail() if proc else "")
        raise BenchError(str(exc)) from exc


def list_served(bench: Bench, endpoint: str, context_length: int) -> None:
    """Register the provider at ``endpoint`` and list the model with the tokenizer it serves."""
    register_provider(bench.market.deployment, bench.provider, endpoint)
    list_model(
        bench.market.deployment,
        bench.provider,
        MODEL_NAME,
        PRICES,
        tokenizer_hash=served_tokenizer_hash(endpoint, MODEL_NAME),
        context_length=context_length,
    )


@contextlib.contextmanager
def sdk_clients(bench: Bench, n: int, folder: str = "clients") -> Iterator[list[tuple[Any, Any]]]:
    """One SDK client per stream, each with its own wallet, store and open channel; closed on
    exit."""
    from tallystick.client import Chain, Tallystick, Wallet

    market = bench.market
    chain = Chain(market.w3, market.registry.address, market.escrow.address)
    workdir = bench.workdir / folder
    workdir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        out = []
        for i in range(n):
            client = Tallystick(
                Wallet(funded_account(market.w3)),
                workdir / f"client{i}.db",
                chain=chain,
                tokenizer_dir=bench.workdir / "tokenizers",
            )
            stack.callback(client.close)
            out.append((client, client.channels.open(MODEL_NAME, DEPOSIT, bench.provider.address)))
        console.print(f"  opened {n} channels on-chain (one per stream)")
        yield out


def ensure_hf_model(gguf: Path = MODEL_GGUF) -> Path:
    """The GGUF as a plain transformers folder: the engines' conversion cache (once per GGUF).

    ``transformers serve`` cannot load this GGUF directly (its config has no ``architectures``),
    so it serves the same weights and tokenizer from the folder the node itself loads.
    """
    from tallystick.node.engines import convert_gguf

    return convert_gguf(gguf)


def _peer_command() -> list[str]:
    script = Path(sys.executable).parent / "transformers"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from transformers.cli.transformers import main; main()"]


@contextlib.contextmanager
def transformers_serve(
    model: Path, workdir: Path, continuous_batching: bool = True
) -> Iterator[tuple[str, str]]:
    """``transformers serve`` on the GGUF's weights, running: (url, model id)."""
    folder = ensure_hf_model(model)
    port = free_port()
    cmd = [*_peer_command(), "serve", str(folder), "--host", "127.0.0.1", "--port", str(port)]
    if continuous_batching:
        cmd.append("--continuous-batching")
    # Its /v1/models scans the hub cache and answers 500 when that folder does not exist.
    hub_cache = workdir / "hf-hub"
    hub_cache.mkdir(exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env["HF_HUB_CACHE"] = str(hub_cache)
    url = f"http://127.0.0.1:{port}"
    with Processes() as procs:
        log = workdir / "transformers-serve.log"
        start_server(procs, "transformers serve", cmd, f"{url}/v1/models", log, env)
        yield url, str(folder)
