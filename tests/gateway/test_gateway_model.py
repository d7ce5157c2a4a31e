"""The gateway in front of a real ``tallystick-node serve`` with the real SmolLM2-135M-Instruct:
the plain ``openai`` SDK's chat, plain and streamed, verified against the real tokenizer and
chat template and billed to the key to the unit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from tallystick.protocol import Prices, TokenizerBundle

from tests.kit.chain import Market, register_and_list
from tests.kit.gateway import GatewayMarket, Provider
from tests.kit.net import free_port
from tests.kit.node import wait_healthy

pytestmark = [pytest.mark.chain, pytest.mark.model]

MODEL = "SmolLM2-135M-Instruct"
PRICES = Prices(input_per_m=1_000_000_000, output_per_m=3_000_000_000)
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


class _ModelNode:
    """``tallystick-node serve --model SmolLM2…gguf`` in a subprocess."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path, url: str) -> None:
        self.cmd, self.env, self.log_path, self.url = cmd, env, log, url
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT,
                                            env=self.env)  # fmt: skip
        wait_healthy(self.url, self.process, timeout=600)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def gw_market(
    anvil: Any, w3: Any, accounts: Any, tmp_path_factory: Any, model_dir: Path, model_file: str
) -> Iterator[GatewayMarket]:
    from tallystick.protocol import deploy

    deployment = deploy(w3, accounts.deployer, challenge_period=3600)
    workdir = tmp_path_factory.mktemp("gateway-model")
    market = GatewayMarket(deployment, accounts, anvil, w3, workdir)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-c", "from tallystick.node.cli import main; main()", "serve"]
    cmd += ["--rpc", anvil.url, "--escrow", deployment.escrow.address]
    cmd += ["--registry", deployment.registry.address, "--db", str(workdir / "node.db")]
    cmd += ["--model", str(model_dir / model_file), "--model-name", MODEL, "--port", str(port)]
    env = {**os.environ, "TALLYSTICK_NODE_KEY": accounts.provider.key.hex()}
    node = _ModelNode(cmd, env, workdir / "node.log", url)
    try:
        node.start()
        bundle = httpx.get(f"{url}/v1/tally/tokenizer/{MODEL}", timeout=60).content
        tokenizer_hash = TokenizerBundle.from_bytes(bundle).hash()
        register_and_list(
            deployment, accounts.provider, url, MODEL, PRICES,
            tokenizer_hash=tokenizer_hash, context_length=8192,
        )  # fmt: skip
        market.providers.append(
            Provider(accounts.provider, Market(deployment, accounts, anvil, w3, port), node)  # type: ignore[arg-type]
        )
        yield market
    finally:
        node.stop()


def test_real_model_plain_and_streamed_through_the_gateway(gateway, api_key):
    client = openai.OpenAI(base_url=gateway.base_url, api_key=api_key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=16, temperature=0
    )
    reply = raw.parse()
    assert "Paris" in (reply.choices[0].message.content or "")
    cost = int(raw.headers["x-tally-cost"])
    assert cost == reply.usage.prompt_tokens * 1000 + reply.usage.completion_tokens * 3000

    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=16, temperature=0, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert "Paris" in text

    (row,) = json.loads(gateway.cli("usage", "--by", "key,model", "--json").stdout)
    assert row["model"] == MODEL and row["requests"] == 2
    assert row["cost"] == row["prompt_tokens"] * 1000 + row["completion_tokens"] * 3000
