"""``tallystick-node serve --engine upstream`` in front of a real ``transformers serve``, on anvil.

The upstream generates; the node meters with the tokenizer of ``--model`` (listed on-chain
by ``list-model --model``), signs records, and its settlement pays the countersigned totals.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

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

pytestmark = pytest.mark.chain

NAME = "tiny-upstream"
PRICES = Prices(input_per_m=10**12, output_per_m=2 * 10**12)
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-layer random Llama with the tiny byte-level tokenizer and its chat template."""
    import torch
    from tallystick.node.engines import TINY_CHAT_TEMPLATE, tiny_tokenizer_json
    from tokenizers import Tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-upstream")
    backend = Tokenizer.from_str(tiny_tokenizer_json())
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>")
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=backend.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def _start(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    out = log.open("wb")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


@pytest.fixture(scope="module")
def upstream(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    cache = tmp_path_factory.mktemp("hf-cache")
    log = tmp_path_factory.mktemp("upstream") / "serve.log"
    cmd = [str(BIN / "transformers"), "serve", str(tiny_dir), "--port", str(port)]
    proc = _start(
        [*cmd, "--device", "cpu"], log, {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, timeout=180)
        yield url
    finally:
        _stop(proc)


def test_upstream_engine_is_metered_countersigned_and_settled(
    upstream, tiny_dir, deployment, anvil, accounts, tmp_path
):
    provider, client, escrow = accounts.provider, accounts.client, deployment.escrow
    args = chain_args(anvil.url, deployment, provider, tmp_path / "node.db")
    runner = CliRunner()
    assert runner.invoke(main, ["register", *args, "--endpoint", "https://x"]).exit_code == 0
    listed = runner.invoke(
        main,
        [
            *("list-model", *args, "--model", str(tiny_dir), "--model-name", NAME),
            *("--input-price", str(PRICES.input_per_m), "--output-price", str(PRICES.output_per_m)),
        ],
    )
    assert listed.exit_code == 0, listed.output
    limits = {
        "token": ETH,
        "max_input_price_per_m": PRICES.input_per_m,
        "max_output_price_per_m": PRICES.output_per_m,
    }
    cid = bytes(escrow.open(client, provider.address, model_id(NAME), 10**17, **limits).value)
    port = free_port()
    engine = ["--engine", "upstream", "--upstream-url", upstream, "--upstream-model", str(tiny_dir)]
    cmd = [str(BIN / "tallystick-node"), "serve", *args, *engine]
    cmd += ["--model", str(tiny_dir), "--model-name", NAME, "--port", str(port)]
    node = _start(cmd, tmp_path / "node.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, node, timeout=120)
        signer = RawChannel(client, escrow.domain, cid)
        messages = [{"role": "user", "content": "hello there"}]
        body = {"model": NAME, "messages": messages, "max_tokens": 6, "temperature": 0}
        with httpx.Client(base_url=url, timeout=60) as http:
            listing = deployment.registry.get_listing(provider.address, model_id(NAME))
            raw = http.get(f"/v1/tally/tokenizer/{NAME}").content
            counter = TokenCounter(TokenizerBundle.from_bytes(raw, listing.tokenizer_hash))
            plain = signer.post(http, "/v1/chat/completions", body)
            assert plain.status_code == 200, plain.text
            signer.served(plain.json())
            text = plain.json()["choices"][0]["message"]["content"]
            first = check_bill(
                counter, escrow.domain, provider.address, plain.json()["tallystick"], messages, text
            )
            streamed = signer.post(
                http,
                "/v1/chat/completions",
                {**body, "stream": True},
                receipt_for(client, escrow.domain, first),
            )
            assert streamed.status_code == 200, streamed.text
            events = [ln[6:] for ln in streamed.text.split("\n\n") if ln.startswith("data: {")]
            chunks = [json.loads(e) for e in events]
            text = "".join(
                c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]
            )
            second = check_bill(
                counter, escrow.domain, provider.address, chunks[-1]["tallystick"], messages, text
            )
            assert second.record.seq == 2
            final = receipt_for(client, escrow.domain, second)
            assert http.post("/v1/tally/receipts", json=final).status_code == 200
        settled = runner.invoke(main, ["settle", *args])
        assert settled.exit_code == 0, settled.output
        owed = cost_of(final["inputTokens"], final["outputTokens"], PRICES)
        assert escrow.earnings(provider.address, ETH) == owed > 0
    finally:
        assert _stop(node) == 0
    assert "Traceback" not in (tmp_path / "node.log").read_text()


def test_serve_with_the_upstream_down_is_one_line(tiny_dir, deployment, anvil, accounts, tmp_path):
    args = chain_args(anvil.url, deployment, accounts.provider, tmp_path / "node.db")
    engine = ["--engine", "upstream", "--upstream-url", "http://127.0.0.1:9"]
    result = CliRunner().invoke(main, ["serve", *args, *engine, "--model", str(tiny_dir)])
    assert result.exit_code == 1, result.output
    # serve logs to stderr (the tokenizer loaded); the error is the one last line
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: upstream unavailable: http://127.0.0.1:9"), result.stderr
    assert "Traceback" not in result.stderr
