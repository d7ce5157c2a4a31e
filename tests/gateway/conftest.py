"""Gateway fixtures: a module's market (fresh contracts, two provider node processes) and the
gateway as a real ``tallystick gateway`` process in front of them (see gatewaykit.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_TESTS / "reliability"))  # reliakit
sys.path.insert(0, str(_TESTS / "node"))  # nodekit_chain

from gatewaykit import CHEAP, DEAR, GatewayMarket, GatewayProcess  # noqa: E402


@pytest.fixture(scope="module")
def token_delay() -> float:
    """Seconds per generated token at the provider nodes (a module may override it)."""
    return 0.0


@pytest.fixture(scope="module")
def cheap_node_args() -> tuple[str, ...]:
    """Extra ``tallystick-node serve`` options of the cheap provider (a module may override)."""
    return ()


@pytest.fixture(scope="module")
def gw_market(
    anvil: Any,
    w3: Any,
    accounts: Any,
    tmp_path_factory: pytest.TempPathFactory,
    token_delay: float,
    cheap_node_args: tuple[str, ...],
) -> Iterator[GatewayMarket]:
    """Fresh contracts and two providers (cheap: accounts.provider, dear: accounts.provider2)."""
    from tallystick.protocol import deploy

    deployment = deploy(w3, accounts.deployer, challenge_period=3600)
    market = GatewayMarket(deployment, accounts, anvil, w3, tmp_path_factory.mktemp("gateway"))
    try:
        cheap = market.add_provider(
            accounts.provider, CHEAP, delay=token_delay, args=cheap_node_args
        )
        cheap.node.start()
        market.add_provider(accounts.provider2, DEAR, delay=token_delay).node.start()
        yield market
    finally:
        market.stop()


@pytest.fixture(scope="module")
def gateway_args() -> tuple[str, ...]:
    """Extra ``tallystick gateway`` options (a module may override it)."""
    return ()


@pytest.fixture(scope="module")
def gateway(
    gw_market: GatewayMarket, accounts: Any, gateway_args: tuple[str, ...]
) -> Iterator[GatewayProcess]:
    """``tallystick gateway`` paying from accounts.client, in front of ``gw_market``."""
    process = GatewayProcess(gw_market, accounts.client, *gateway_args)
    try:
        yield process.start()
    finally:
        process.stop()


@pytest.fixture(scope="module")
def api_key(gateway: GatewayProcess) -> str:
    return gateway.create_key("tests")
