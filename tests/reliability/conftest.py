"""Fixtures for the reliability and security tests: real processes, real chain, real HTTP.

``market`` (fresh contracts state per test, provider registered and listed), ``make_client``
(SDK clients with their own stores), ``start_node`` (node processes, stopped before the chain
state is reverted), ``rpc_proxy`` (a cuttable relay to anvil), ``long_mode`` (``--long``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from reliakit import MODEL, PRICES, Market, NodeProcess, TcpProxy, free_port
from tallystick.client import Tallystick, Wallet


@pytest.fixture
def long_mode(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--long"))


@pytest.fixture
def market(deployment: Any, accounts: Any, anvil: Any, w3: Any) -> Market:
    from tallystick.node.engines import tiny_tokenizer_bundle

    port = free_port()
    deployment.registry.register(accounts.provider, f"http://127.0.0.1:{port}")
    deployment.registry.list_model(
        accounts.provider,
        MODEL,
        PRICES,
        tokenizer_hash=tiny_tokenizer_bundle().hash(),
        context_length=2048,
    )
    return Market(deployment, accounts, anvil, w3, port)


@pytest.fixture
def make_client(market: Market, tmp_path: Path) -> Iterator[Callable[..., Tallystick]]:
    """``make_client(account, name)``: a Tallystick on ``tmp_path/name.db`` (closed at teardown)."""
    made: list[Tallystick] = []

    def make(account: Any, name: str, **kwargs: Any) -> Tallystick:
        client = Tallystick(
            Wallet(account), tmp_path / f"{name}.db", chain=market.chain(), **kwargs
        )
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def start_node(market: Market, tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """``start_node(**kw)``: a running NodeProcess, stopped before the chain reverts."""
    nodes: list[NodeProcess] = []

    def start(**kwargs: Any) -> NodeProcess:
        node = NodeProcess(market, tmp_path, **kwargs)
        nodes.append(node)
        return node.start()

    yield start
    for node in nodes:
        node.stop()


@pytest.fixture
def rpc_proxy(anvil: Any) -> Iterator[TcpProxy]:
    port = int(anvil.url.rsplit(":", 1)[1])
    proxy = TcpProxy(port)
    yield proxy
    proxy.close()
