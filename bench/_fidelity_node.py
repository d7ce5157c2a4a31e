"""The fidelity bench's honest run through the real node path (docs/protocol.md §10.4).

A real ``tallystick-node serve`` process on anvil, the real SmolLM2 weights, SDK clients that
pay per token and hand every verified bill to one background ``Auditor`` (fraction 1.0), as
``Tallystick(audit_weights=...)`` does. What varies is what the node path varies: the torch
threads of the node (``TALLYSTICK_THREADS`` 1 and 2), how many requests run at once (1, 4,
8: the engine's batch), streaming or one JSON answer, and temperature 0 and 0.7.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODEL_NAME = "SmolLM2-135M-Instruct"
PRICES = (10**9, 4 * 10**9)  # wei per million input / output tokens
DEPOSIT = 10**16


@dataclass(frozen=True)
class NodeRun:
    """How many generations per cell: ``per_cell[concurrency]`` for each (threads, T, stream)."""

    per_cell: tuple[tuple[int, int], ...] = ((1, 4), (4, 12), (8, 24))
    threads: tuple[int, ...] = (1, 2)
    temperatures: tuple[float, ...] = (0.0, 0.7)
    max_tokens: int = 24


QUICK_NODE = NodeRun(per_cell=((1, 1), (4, 4), (8, 8)), threads=(1,), max_tokens=16)


def honest_node(
    model: Path, cfg: NodeRun, reference: Any, progress: Callable[[str], None]
) -> dict[str, Any]:
    """Every honest generation audited; the verdicts and the honest figures per cell."""
    from tallystick.client._auditor import AuditLog, Auditor
    from tallystick.devnet import Processes, deploy_market, start_anvil

    results: list[tuple[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, Processes() as procs:
        work = Path(tmp)
        chain = start_anvil(procs)
        market = deploy_market(chain.url)
        auditor = Auditor(AuditLog(work / "audits.db"), fraction=1.0, reference=reference)
        try:
            for threads in cfg.threads:
                results += _one_node(procs, market, model, work, threads, cfg, auditor, progress)
        finally:
            auditor.close()
    return _summary(results, cfg)


def _one_node(
    procs: Any,
    market: Any,
    model: Path,
    work: Path,
    threads: int,
    cfg: NodeRun,
    auditor: Any,
    progress: Callable[[str], None],
) -> list[tuple[str, Any]]:
    from tallystick.devnet import (
        funded_account,
        gguf_context_length,
        list_model,
        register_provider,
        served_tokenizer_hash,
        start_node,
    )
    from tallystick.protocol import Prices

    provider = funded_account(market.w3)
    most = max(c for c, _ in cfg.per_cell)
    node = start_node(
        procs,
        rpc=market.rpc,
        escrow=market.escrow.address,
        registry=market.registry.address,
        db=work / f"node{threads}.db",
        key=provider.key.hex(),
        args=["--model", str(model), "--model-name", MODEL_NAME, "--max-batch", str(most),
              "--credit-requests", "1", "--settle-interval", "86400", "--log-level", "WARNING"],
        env={"TALLYSTICK_THREADS": str(threads)},
        log=work / f"node{threads}.log",
    )  # fmt: skip
    progress(f"node with {threads} torch thread(s) up at {node.url}")
    register_provider(market.deployment, provider, node.url)
    list_model(
        market.deployment,
        provider,
        MODEL_NAME,
        Prices(*PRICES),
        tokenizer_hash=served_tokenizer_hash(node.url, MODEL_NAME),
        context_length=gguf_context_length(model),
        weights=model,
    )
    clients = _clients(market, provider.address, work / f"t{threads}", most, auditor)
    out: list[tuple[str, Any]] = []
    try:
        offset = 0
        for concurrency, n in cfg.per_cell:
            for temperature in cfg.temperatures:
                for stream in (False, True):
                    cell = f"threads{threads}_batch{concurrency}_temp{temperature}_" + (
                        "stream" if stream else "plain"
                    )
                    done = _cell(clients[:concurrency], n, offset, temperature, stream, cfg)
                    offset += n
                    reports = [f.result(timeout=3600) for f in done]
                    out += [(cell, r) for r in reports]
                    bad = sum(r.verdict != "pass" for r in reports)
                    progress(f"honest {cell}: {bad} not passed of {len(reports)}")
    finally:
        for client, _ in clients:
            client.close()
        procs.stop(node.proc)
    return out


def _clients(market: Any, provider: str, work: Path, n: int, auditor: Any) -> list[Any]:
    """``n`` SDK clients, each with a channel, all auditing through the one ``auditor``."""
    from tallystick.client import Chain, Tallystick, Wallet
    from tallystick.devnet import funded_account

    work.mkdir(parents=True, exist_ok=True)
    sdk_chain = Chain(market.w3, market.registry.address, market.escrow.address)
    out = []
    for i in range(n):
        client = Tallystick(
            Wallet(funded_account(market.w3)),
            work / f"client{i}.db",
            chain=sdk_chain,
            tokenizer_dir=work / "tokenizers",
        )
        client.biller.auditor = auditor  # one reference model for all, as one user would have
        out.append((client, client.channels.open(MODEL_NAME, DEPOSIT, provider)))
    return out


def _cell(
    clients: list[Any], n: int, offset: int, temperature: float, stream: bool, cfg: NodeRun
) -> list[Any]:
    """``n`` requests, ``len(clients)`` at a time (one per channel); the audits they queued."""
    from bench.fidelity import TOPICS, VERBS

    auditor = clients[0][0].biller.auditor

    def one(k: int) -> None:
        client, channel = clients[k % len(clients)]
        i = offset + k
        text = f"{VERBS[i % len(VERBS)]} {TOPICS[(i // len(VERBS)) % len(TOPICS)]}."
        answer = client.chat.completions.create(
            model=MODEL_NAME,
            messages=[{"role": "user", "content": text}],
            max_tokens=cfg.max_tokens,
            temperature=temperature,
            stream=stream,
            channel=channel.channel_id,
        )
        if stream:
            for _ in answer:
                pass

    with ThreadPoolExecutor(max_workers=len(clients)) as pool:
        for start in range(0, n, len(clients)):
            # One request per channel at a time: a round is one batch of len(clients).
            list(pool.map(one, range(start, min(n, start + len(clients)))))
    done = auditor.scheduled
    auditor.scheduled = []
    return done


def _summary(results: list[tuple[str, Any]], cfg: NodeRun) -> dict[str, Any]:
    reports = [r for _, r in results]
    failed = [r for r in reports if r.verdict != "pass"]
    figures = [r.figures for r in reports if "max_proof_error" in r.figures]
    cells: dict[str, int] = {}
    for cell, _ in results:
        cells[cell] = cells.get(cell, 0) + 1
    return {
        "path": "tallystick-node serve (real SmolLM2 weights) -> SDK clients, audit fraction 1.0",
        "generations": len(reports),
        "false_positives": sum(r.verdict == "fail" for r in reports),
        "unverifiable": sum(r.verdict == "unverifiable" for r in reports),
        "tokens": sum(r.figures.get("tokens", 0) for r in reports),
        "max_proof_error": max((f["max_proof_error"] for f in figures), default=None),
        "min_margin": min((f["min_margin"] for f in figures), default=None),
        "max_tokens": cfg.max_tokens,
        "audit_s_total": round(sum(r.figures.get("audit_s", 0) for r in reports), 1),
        "failures": [r.to_json() for r in failed[:3]],
        "cells": cells,
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
