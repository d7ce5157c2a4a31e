"""The gateway's test market: contracts, provider node processes, the gateway as a process.

Fixtures (module-scoped, so node and gateway processes live across a module's tests):
``gw_market`` (fresh contracts, a cheap and a dear provider node), ``gateway`` (``tallystick
gateway`` paying from accounts.client in front of them), ``api_key``; a module overrides
``token_delay``, ``cheap_node_args`` or ``gateway_args`` to change them.

- ``GatewayMarket``: fresh contracts on the session's anvil (deployed once per module, so a
  node process and a gateway process can live across the module's tests), providers each
  registered at a free port and listing ``fake-model`` (the tiny tokenizer) in ETH.
- nodes are ``tallystick-node serve`` processes (``tests/kit/node.py: NodeProcess``: the real
  CLI with FakeEngine), which a test can SIGKILL;
- ``GatewayProcess``: ``tallystick gateway`` as a subprocess, its key made with
  ``tallystick gateway keys create``, reached over real HTTP.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from tallystick.protocol import Prices

from tests.kit.chain import MODEL, Market, key_hex, register_and_list
from tests.kit.net import free_port, stop_process, wait_http
from tests.kit.node import NodeProcess

CHEAP = Prices(input_per_m=1_000_000_000, output_per_m=3_000_000_000)  # 1000 / 3000 wei a token
DEAR = Prices(input_per_m=2_000_000_000, output_per_m=6_000_000_000)
BUDGET = 10**17  # wei the gateway may keep in channels
CLI = [sys.executable, "-c", "from tallystick.client.cli import main; main()"]


@dataclass
class Provider:
    account: Any
    market: Market
    node: NodeProcess

    @property
    def address(self) -> str:
        return str(self.account.address)


@dataclass
class GatewayMarket:
    deployment: Any
    accounts: Any
    anvil: Any
    w3: Any
    workdir: Path
    providers: list[Provider] = field(default_factory=list)

    def add_provider(
        self, account: Any, prices: Prices, *, delay: float = 0.0, args: tuple[str, ...] = ()
    ) -> Provider:
        port = free_port()
        register_and_list(self.deployment, account, f"http://127.0.0.1:{port}", MODEL, prices)
        market = Market(self.deployment, self.accounts, self.anvil, self.w3, port)
        folder = self.workdir / f"node-{port}"
        folder.mkdir()
        env = {"TALLY_FAKE_TOKEN_DELAY": str(delay)} if delay else {}
        node = NodeProcess(market, folder, env=env, args=list(args), account=account)
        provider = Provider(account, market, node)
        self.providers.append(provider)
        return provider

    def chain_args(self, client: Any) -> list[str]:
        return [
            "--rpc",
            self.anvil.url,
            "--registry",
            self.deployment.registry.address,
            "--escrow",
            self.deployment.escrow.address,
            "--key",
            key_hex(client),
            "--store",
            str(self.workdir / "gateway.db"),
        ]

    def stop(self) -> None:
        for provider in self.providers:
            provider.node.stop()


class GatewayProcess:
    """``tallystick gateway`` in a subprocess on a free port."""

    def __init__(self, market: GatewayMarket, client: Any, *args: str) -> None:
        self.market = market
        self.client = client
        self.port = free_port()
        self.args = list(args)
        self.log_path = market.workdir / f"gateway-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``tallystick ARGS`` with the gateway's chain, key and store."""
        cmd = [*CLI, *self.market.chain_args(self.client), *args]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise RuntimeError(f"{args} failed ({result.returncode}):\n{result.stderr}")
        return result

    def create_key(self, name: str, *limits: str) -> str:
        return self.cli("gateway", "keys", "create", name, *limits).stdout.strip()

    def start(self, timeout: float = 60.0) -> GatewayProcess:
        cmd = [*CLI, *self.market.chain_args(self.client), "gateway", "--port", str(self.port)]
        cmd += ["--budget", str(BUDGET), *self.args]
        log = self.log_path.open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        what = "the gateway"
        wait_http(self.url + "/health", self.process, timeout=timeout, what=what, log=self.log)
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


# --- fixtures ---


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
