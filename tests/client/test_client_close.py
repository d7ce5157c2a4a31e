"""Closing a channel that served no request (zero receipt), through the CLI, on the real node."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from tallystick.client import Chain, Tallystick, Wallet
from tallystick.client.cli import cli
from tallystick.protocol import ChannelStatus, Prices

from tests.kit.client import cli_args

pytestmark = pytest.mark.chain
PRICES = Prices(input_per_m=3_000_000_000, output_per_m=9_000_000_000)
DEPOSIT = 10**15


@pytest.fixture
def endpoint(node_server: Any) -> str:
    return str(node_server(prices=PRICES))


def test_cli_close_of_an_unused_channel_refunds_the_whole_deposit(
    endpoint: str,
    deployment: Any,
    accounts: Any,
    anvil: Any,
    w3: Any,
    tmp_path: Path,
    advance_time: Any,
) -> None:
    store = tmp_path / "c.db"
    chain = Chain(w3, deployment.registry.address, deployment.escrow.address)
    with Tallystick(Wallet(accounts.client), store, chain=chain) as client:
        info = client.channels.open("fake-model", DEPOSIT)
    args = cli_args(anvil.url, deployment, accounts.client, store)
    runner = CliRunner()
    result = runner.invoke(cli, [*args, "channel", "close", info.hex_id])
    assert result.exit_code == 0, result.output
    state = deployment.escrow.get_channel(info.channel_id)
    if state.status == ChannelStatus.CLOSING:
        # The node would not countersign a zero receipt: the CLI took the unilateral path.
        assert "unilateral close was requested" in _flat(result.output)
        advance_time(deployment.escrow.challenge_period() + 1)
        result = runner.invoke(cli, [*args, "channel", "finalize", info.hex_id])
        assert result.exit_code == 0, result.output
        assert "provider paid 0 ETH, refunded 0.001 ETH" in _flat(result.output)
    else:
        assert "provider paid 0 ETH, refunded 0.001 ETH" in _flat(result.output)
    state = deployment.escrow.get_channel(info.channel_id)
    assert (state.status, state.paid) == (ChannelStatus.CLOSED, 0)
    with Tallystick(Wallet(accounts.client), store, chain=chain) as client:
        assert client.channel(info.channel_id).status == ChannelStatus.CLOSED


def _flat(text: str) -> str:
    return " ".join(text.split())  # rich wraps long lines
