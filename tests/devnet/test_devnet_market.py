"""``tallystick.devnet``: anvil, a deployed market, a node process, a provider listed, a paid
request through the SDK; and every process stopped with its whole group."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from tallystick.client import Chain, Tallystick, Wallet
from tallystick.devnet import (
    DevnetError,
    Processes,
    deploy_market,
    dev_account,
    funded_account,
    list_model,
    register_provider,
    served_tokenizer_hash,
    start_anvil,
    start_node,
)
from tallystick.protocol import Prices, model_id

pytestmark = pytest.mark.chain

# The real node CLI with FakeEngine in place of the model (loading it takes minutes here).
FAKE_NODE = [sys.executable, str(Path(__file__).parents[1] / "kit" / "_fake_node.py")]
PRICES = Prices(input_per_m=10**9, output_per_m=3 * 10**9)


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_market_with_a_listed_node_serves_a_paid_request(tmp_path: Path) -> None:
    with Processes() as procs:
        chain = start_anvil(procs, log=tmp_path / "anvil.log")
        market = deploy_market(chain.url, dev_account())
        assert market.deployer.address == dev_account().address
        provider = funded_account(market.w3)
        node = start_node(
            procs,
            rpc=chain.url,
            escrow=market.escrow.address,
            registry=market.registry.address,
            db=tmp_path / "node.db",
            key=provider.key.hex(),
            command=FAKE_NODE,
            args=["--model-name", "fake-model", "--settle-interval", "86400"],
            log=tmp_path / "node.log",
            timeout_s=120,
        )
        register_provider(market.deployment, provider, node.url)
        mid = list_model(
            market.deployment,
            provider,
            "fake-model",
            PRICES,
            tokenizer_hash=served_tokenizer_hash(node.url, "fake-model"),
            context_length=2048,
        )
        assert mid == model_id("fake-model")
        assert market.registry.get_provider(provider.address).endpoint == node.url
        client = Tallystick(
            Wallet(funded_account(market.w3)),
            tmp_path / "client.db",
            chain=Chain(market.w3, market.registry.address, market.escrow.address),
        )
        with client:
            client.channels.open("fake-model", 10**15)
            reply = client.chat.completions.create(
                model="fake-model", messages=[{"role": "user", "content": "hi"}], max_tokens=8
            )
            assert reply.tally is not None and reply.tally.cost > 0
        groups = [p.popen.pid for p in procs.procs]
        assert [p.name for p in procs.procs] == ["anvil", "node"]
    assert not procs.procs
    assert not any(_alive(pgid) for pgid in groups)


def test_a_node_that_exits_is_one_clear_error(tmp_path: Path) -> None:
    with Processes() as procs:
        chain = start_anvil(procs)
        with pytest.raises(DevnetError, match=r"the node exited with code [12]"):
            start_node(
                procs,
                rpc=chain.url,
                escrow="0x" + "00" * 20,
                registry="0x" + "00" * 20,
                db=tmp_path / "node.db",
                key="0x" + "11" * 32,
                command=FAKE_NODE,
                args=["--model-name", "fake-model"],
                timeout_s=120,
            )
