"""``NodeState``: everything a request handler needs, built once by the app's lifespan.

``build_state`` makes what was not injected (unit tests pass a FakeEngine and an in-memory
chain): the engine, the chain client, the ledger, the payment gate, the rate limiter and
the settlement worker. Handlers reach it through ``node_of(request)``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from eth_account.signers.local import LocalAccount
from starlette.requests import Request
from tallystick.protocol import Domain

from ._chain import ChainView, ChannelCache
from ._gate import PaymentGate
from ._keys import load_account
from ._ledger import LedgerStore, open_ledger
from ._metrics import NodeMetrics
from ._ratelimit import RateLimiter
from ._settings import Settings
from ._settlement import SettlementWorker

if TYPE_CHECKING:
    from .engines import Engine

__all__ = ["NodeState", "build_state", "heartbeat", "node_of"]

log = logging.getLogger("tallystick.node")


@dataclass
class NodeState:
    """Everything a request handler needs, built by the lifespan."""

    settings: Settings
    engine: Engine
    chain: ChainView
    ledger: LedgerStore
    gate: PaymentGate
    limiter: RateLimiter
    metrics: NodeMetrics
    worker: SettlementWorker
    domain: Domain
    provider: str


def node_of(request: Request) -> NodeState:
    """The state the lifespan put on the app."""
    node: NodeState = request.app.state.node
    return node


async def build_state(
    settings: Settings,
    metrics: NodeMetrics,
    engine: Engine | None,
    chain: ChainView | None,
    store: LedgerStore | None,
    account: LocalAccount | None,
) -> NodeState:
    """Build what was not injected, start the engine, wire the gate and the worker."""
    account = account or load_account(settings)
    if chain is None:
        from ._escrow import EscrowChain

        chain = await EscrowChain.connect(settings, account)
    ledger = store or open_ledger(settings.ledger_location)
    if engine is None:
        from ._engine_factory import build_engine

        engine = await build_engine(settings)
    log.info("loading model %s", engine.model_name)
    started = time.perf_counter()
    await engine.start()
    log.info("model ready in %.1fs", time.perf_counter() - started)
    metrics.watch_engine(engine.model_name, engine.stats)
    metrics.watch_rpc(chain.rpc_failures, getattr(chain, "rpc_errors", dict))
    metrics.watch_channels(ledger.channels)
    cache = ChannelCache(chain, ledger, settings.channel_cache_ttl)
    gate = PaymentGate(
        account=account,
        domain=chain.domain,
        cache=cache,
        ledger=ledger,
        credit_requests=settings.credit_requests,
        replica_ttl=settings.replica_ttl,
    )
    worker = SettlementWorker(
        chain=chain,
        ledger=ledger,
        cache=cache,
        metrics=metrics,
        settings=settings,
        owner=gate.owner,
    )
    return NodeState(
        settings,
        engine,
        chain,
        ledger,
        gate,
        RateLimiter(settings.rpm_limit, settings.tpm_limit),
        metrics,
        worker,
        chain.domain,
        account.address,
    )


async def heartbeat(node: NodeState) -> None:
    """Beat for this replica: the gate's reservations stay counted by every replica only
    while this runs."""
    while True:
        await asyncio.sleep(node.settings.replica_ttl / 3)
        try:
            node.gate.heartbeat()
        except Exception:
            log.exception("ledger heartbeat failed; retrying")
