"""Greedy audits in front of llama.cpp (docs/protocol.md §10.5), for real: a
``tallystick-node serve --engine llamacpp`` running make llama's llama-server on the SmolLM2
Q4_1 GGUF, listed with that file's modelHash on anvil; an SDK client holding the same GGUF
audits every bill. The node advertises ``audit: "greedy"``; its temperature-0 answers (no logit
proof) are audited against the transformers reference and pass; a temperature-0.7 answer is
not audited at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tallystick.client import Chain, Tallystick, Wallet
from tallystick.devnet import (
    Processes,
    deploy_market,
    funded_account,
    gguf_context_length,
    list_model,
    register_provider,
    served_tokenizer_hash,
    start_anvil,
    start_node,
)
from tallystick.node.engines import ModelLoadError, find_llama_server
from tallystick.protocol import Prices

pytestmark = [pytest.mark.chain, pytest.mark.model]

MODEL = "SmolLM2-135M-Instruct"
PROMPTS = ["Name three colours.", "What is a lighthouse?", "Say hello in French."]


@pytest.fixture(scope="module")
def llama_market(
    model_dir: Path, model_file: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Tallystick, Any, str]]:
    try:
        find_llama_server()
    except ModelLoadError as exc:
        pytest.skip(str(exc))
    work = tmp_path_factory.mktemp("greedy")
    weights = model_dir / model_file
    with Processes() as procs:
        chain = start_anvil(procs)
        m = deploy_market(chain.url)
        provider = funded_account(m.w3)
        node = start_node(
            procs,
            rpc=chain.url,
            escrow=m.escrow.address,
            registry=m.registry.address,
            db=work / "node.db",
            key=provider.key.hex(),
            args=["--engine", "llamacpp", "--model", str(weights), "--model-name", MODEL,
                  "--llama-threads", "1", "--settle-interval", "86400"],
            log=work / "node.log",
        )  # fmt: skip
        register_provider(m.deployment, provider, node.url)
        list_model(
            m.deployment,
            provider,
            MODEL,
            Prices(10**9, 4 * 10**9),
            tokenizer_hash=served_tokenizer_hash(node.url, MODEL),
            context_length=gguf_context_length(weights),
            weights=weights,
        )
        client = Tallystick(
            Wallet(funded_account(m.w3)),
            work / "client.db",
            chain=Chain(m.w3, m.registry.address, m.escrow.address),
            tokenizer_dir=work / "tokenizers",
            audit_weights=weights,
            audit_fraction=1.0,
        )
        try:
            channel = client.channels.open(MODEL, 10**16, provider.address)
            yield client, channel, node.url
        finally:
            client.close()


def test_the_llamacpp_node_advertises_greedy_audits(llama_market: Any) -> None:
    _, _, url = llama_market
    (entry,) = httpx.get(f"{url}/v1/models", timeout=30).json()["data"]
    assert (entry["audit"], entry["sampler"]) == ("greedy", None)
    assert entry["model_hash"].startswith("0x") and entry["model_hash"] != "0x" + "00" * 32


@pytest.mark.timeout(900)
def test_temperature_0_answers_pass_a_greedy_audit_and_others_are_not_audited(
    llama_market: Any,
) -> None:
    client, channel, _ = llama_market
    for i, text in enumerate(PROMPTS):  # one after another: llama-server's kept-alive sockets
        reply = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": text}],
            max_tokens=24,
            temperature=0,
            stream=i % 2 == 1,
            channel=channel.channel_id,
        )
        if i % 2 == 1:
            for _ in reply:
                pass
    reports = client.auditor.drain(timeout=600)
    assert len(reports) == len(PROMPTS)
    for report in reports:
        assert report.verdict == "pass", report.to_json()
        assert report.figures["mode"] == "greedy"
        assert report.figures["tokens"] > 0
    client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": PROMPTS[0]}],
        max_tokens=8,
        temperature=0.7,
        channel=channel.channel_id,
    )
    assert client.auditor.drain(timeout=60) == []  # llama.cpp's own sampler: not replayable
    assert client.audit_record(channel.provider).passed == len(PROMPTS)
