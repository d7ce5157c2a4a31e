"""The gateway's test market: contracts, provider node processes, the gateway as a process.

- ``GatewayMarket``: fresh contracts on the session's anvil (deployed once per module, so a
  node process and a gateway process can live across the module's tests), providers each
  registered at a free port and listing ``fake-model`` (the tiny tokenizer) in ETH.
- nodes are ``tallystick-node serve`` processes (reliakit's ``NodeProcess``: the real CLI with
  FakeEngine), which a test can SIGKILL;
- ``GatewayProcess``: ``tallystick gateway`` as a subprocess, its key made with
  ``tallystick gateway keys create``, reached over real HTTP.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from reliakit import MODEL, Market, NodeProcess, free_port
from tallystick.protocol import Prices

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
        from tallystick.node.engines import tiny_tokenizer_bundle

        port = free_port()
        self.deployment.registry.register(account, f"http://127.0.0.1:{port}")
        self.deployment.registry.list_model(
            account,
            MODEL,
            prices,
            tokenizer_hash=tiny_tokenizer_bundle().hash(),
            context_length=2048,
        )
        market = Market(self.deployment, self.accounts, self.anvil, self.w3, port)
        folder = self.workdir / f"node-{port}"
        folder.mkdir()
        env = {"TALLYSTICK_NODE_KEY": "0x" + account.key.hex().removeprefix("0x")}
        if delay:
            env["TALLY_FAKE_TOKEN_DELAY"] = str(delay)
        node = NodeProcess(market, folder, env=env, args=list(args))
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
            "0x" + client.key.hex().removeprefix("0x"),
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
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the gateway exited ({self.process.returncode}):\n{self.log()}")
            try:
                if httpx.get(self.url + "/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError(f"the gateway did not answer within {timeout} s:\n{self.log()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
