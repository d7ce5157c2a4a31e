"""Node unit-test fixtures: a FakeEngine app over an in-memory chain (see nodekit.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from eth_account import Account
from nodekit import ESCROW, FakeChain, Harness, SigningTransport, open_channel, settings
from tallystick.node import LedgerStore, PostgresLedger, SqliteLedger, create_app
from tallystick.node.engines import FakeEngine
from tallystick.protocol import Domain


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def make_ledger(tmp_path: Any, request: pytest.FixtureRequest) -> Callable[[str], LedgerStore]:
    """``make_ledger("sqlite" | "postgresql")``: a fresh, empty store of that kind."""

    def factory(kind: str) -> LedgerStore:
        if kind == "postgresql":
            return PostgresLedger(request.getfixturevalue("postgres").new_database())
        return SqliteLedger(tmp_path / f"ledger-{len(list(tmp_path.iterdir()))}.db")

    return factory


@pytest.fixture
def make_node(make_ledger: Callable[[str], LedgerStore]) -> Callable[..., Any]:
    """An async context factory: ``async with make_node(engine=..., **settings) as h``.

    ``store="postgresql"`` runs the node on a PostgreSQL ledger (default: SQLite).
    """
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def factory(
        engine: FakeEngine | None = None,
        run_worker: bool = False,
        store: str = "sqlite",
        **overrides: Any,
    ) -> AsyncIterator[Harness]:
        provider = Account.from_key("0x" + "11" * 32)
        client = Account.from_key("0x" + "22" * 32)
        chain = FakeChain(Domain(31337, ESCROW), provider.address)
        cid = open_channel(chain, client)
        engine = engine or FakeEngine(reply="Hello there, friend.")
        ledger = make_ledger(store)
        app = create_app(
            settings(**overrides),
            engine=engine,
            chain=chain,
            store=ledger,
            account=provider,
            run_worker=run_worker,
        )
        async with app.router.lifespan_context(app):
            transport = SigningTransport(httpx.ASGITransport(app=app))
            async with httpx.AsyncClient(transport=transport, base_url="http://node") as http:
                transport.harness = Harness(app, http, chain, engine, ledger, provider, client, cid)
                yield transport.harness
        ledger.close()

    return factory
