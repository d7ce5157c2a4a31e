"""``tallystick-node serve`` as a real process: SmolLM2 on anvil with the real contracts.

The listing is made with ``list-model --model PATH``; the client side uses only the protocol
package: it fetches the tokenizer bundle, checks it against the on-chain hash, recounts the
prompt (chat template rendered, then encoded), decodes the completion ids and compares them
with the text, countersigns, and the node's settlement pays exactly the countersigned totals.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from tallystick.node.cli import main
from tallystick.protocol import (
    ETH,
    Prices,
    TokenCounter,
    TokenizerBundle,
    cost_of,
    model_id,
)

from tests.kit.net import free_port
from tests.kit.node import RawChannel, chain_args, check_bill, receipt_for, wait_healthy

pytestmark = [pytest.mark.model, pytest.mark.chain]

NAME = "SmolLM2-135M-Instruct"
PRICES = Prices(input_per_m=10**12, output_per_m=3 * 10**12)
NODE = Path(sys.executable).parent / "tallystick-node"


@pytest.fixture
def served(
    deployment: Any, anvil: Any, accounts: Any, model_dir: Path, model_file: str, tmp_path: Path
) -> Iterator[tuple[str, Any, bytes, subprocess.Popen[bytes]]]:
    """The provider registered and listed by the CLI, a channel, and the node running."""
    provider = accounts.provider
    args = chain_args(anvil.url, deployment, provider, tmp_path / "node.db")
    model_path = str(model_dir / model_file)
    runner = CliRunner()
    out = runner.invoke(main, ["register", *args, "--endpoint", "http://127.0.0.1"])
    assert out.exit_code == 0, out.output
    listed = runner.invoke(
        main,
        [
            "list-model",
            *args,
            *("--model", model_path),
            *("--input-price", str(PRICES.input_per_m)),
            *("--output-price", str(PRICES.output_per_m)),
        ],
    )
    assert listed.exit_code == 0, listed.output
    assert f"listed {NAME} " in listed.output
    cid = bytes(
        deployment.escrow.open(
            accounts.client,
            provider.address,
            model_id(NAME),
            10**17,
            token=ETH,
            max_input_price_per_m=PRICES.input_per_m,
            max_output_price_per_m=PRICES.output_per_m,
        ).value
    )
    port = free_port()
    log = (tmp_path / "node.log").open("wb")
    proc = subprocess.Popen(
        [
            *(str(NODE), "serve", *args),
            *("--model", model_path, "--port", str(port)),
            *("--max-batch", "2", "--settle-interval", "3600"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, timeout=180)
        yield url, deployment, cid, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


def _counter(http: httpx.Client, registry: Any, provider: str) -> TokenCounter:
    """The bundle the node serves, accepted only if it hashes to the on-chain listing."""
    listing = registry.get_listing(provider, model_id(NAME))
    raw = http.get(f"/v1/tally/tokenizer/{NAME}").content
    bundle = TokenizerBundle.from_bytes(raw, expected_hash=listing.tokenizer_hash)
    return TokenCounter(bundle)


def _sse(text: str) -> list[dict[str, Any]]:
    lines = [ln[6:] for ln in text.split("\n\n") if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(ln) for ln in lines[:-1]]


def test_smollm2_served_metered_countersigned_and_settled(served, accounts, anvil, tmp_path):
    url, deployment, cid, proc = served
    escrow, provider, client = deployment.escrow, accounts.provider.address, accounts.client
    domain = escrow.domain
    raw = RawChannel(client, domain, cid)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    with httpx.Client(base_url=url, timeout=120) as http:
        counter = _counter(http, deployment.registry, provider)
        models = http.get("/v1/models").json()["data"][0]
        assert models["id"] == NAME and models["listed"] is True
        body = {"model": NAME, "messages": messages, "max_tokens": 6, "temperature": 0}
        plain = raw.post(http, "/v1/chat/completions", body)
        assert plain.status_code == 200, plain.text
        pj = raw.served(plain.json())
        choice = pj["choices"][0]
        content, finish = choice["message"]["content"], choice["finish_reason"]
        first = check_bill(
            counter, domain, provider, pj["tallystick"], messages, content, exact=finish == "length"
        )
        assert pj["usage"]["completion_tokens"] == first.record.completion_tokens
        receipt = receipt_for(client, domain, first)

        streamed = raw.post(
            http, "/v1/chat/completions", {**body, "stream": True, "max_tokens": 5}, receipt
        )
        assert streamed.status_code == 200, streamed.text
        chunks = _sse(streamed.text)
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        finish = next(c["choices"][0]["finish_reason"] for c in chunks[::-1] if c["choices"])
        tally = chunks[-1]["tallystick"]
        second = check_bill(
            counter, domain, provider, tally, messages, text, exact=finish == "length"
        )
        assert second.record.seq == 2 and second.record.prev_root == first.record.usage_root()
        final = receipt_for(client, domain, second)
        assert http.post("/v1/tally/receipts", json=final).status_code == 200

    before = escrow.earnings(provider, ETH)
    settled = CliRunner().invoke(
        main,
        ["settle", *chain_args(anvil.url, deployment, accounts.provider, tmp_path / "node.db")],
    )
    assert settled.exit_code == 0, settled.output
    owed = cost_of(final["inputTokens"], final["outputTokens"], PRICES)
    assert escrow.earnings(provider, ETH) - before == owed > 0
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0
    log = (tmp_path / "node.log").read_text()
    assert "Traceback" not in log
    assert accounts.provider.key.hex().removeprefix("0x") not in log
