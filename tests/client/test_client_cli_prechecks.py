"""Errors said before the chain says them: funds, contracts at the addresses, closing twice.

On anvil with a real node: each failure is one line with the amounts in token units, never
a raw revert, ``Web3RPCError``, ``BadFunctionCallOutput`` or ``EmptyRevert``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from tallystick.protocol import Prices

from tests.kit.client import cli_args, run_cli

pytestmark = pytest.mark.chain
PRICES = Prices(input_per_m=3_000_000_000, output_per_m=9_000_000_000)
RAW = ("Web3RPCError", "BadFunctionCallOutput", "EmptyRevert", "Traceback", "ContractError")


@pytest.fixture
def args(deployment: Any, accounts: Any, anvil: Any, tmp_path: Path, node_server: Any) -> list[str]:
    node_server(prices=PRICES)
    return cli_args(anvil.url, deployment, accounts.client, tmp_path / "c.db")


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code, out, err = run_cli(argv, capsys)
    return code, out, " ".join(err.split())


def _one_clear_line(err: str) -> None:
    assert err.startswith("error:")
    assert not any(raw in err for raw in RAW), err


def test_a_deposit_above_the_balance_is_refused_before_sending(
    args: list[str], w3: Any, accounts: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    balance = w3.eth.get_balance(accounts.client.address)
    nonce = w3.eth.get_transaction_count(accounts.client.address)
    too_much = f"{balance // 10**18 + 5}ETH"
    code, _, err = _run(
        [*args, "channel", "open", "--model", "fake-model", "--deposit", too_much], capsys
    )
    assert code == 1
    _one_clear_line(err)
    assert re.search(
        r"holds [0-9.]+ ETH; the deposit needs [0-9]+ ETH \([0-9.]+ ETH more\) plus gas", err
    )
    assert w3.eth.get_transaction_count(accounts.client.address) == nonce  # nothing was sent


def test_closing_twice_says_the_channel_is_already_closed(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(
        [*args, "channel", "open", "--model", "fake-model", "--deposit", "0.001ETH"], capsys
    )
    assert code == 0, out
    cid = re.search(r"channel (0x[0-9a-f]{64})", out)[1]
    code, out, err = _run([*args, "chat", "--model", "fake-model", "-m", "hello"], capsys)
    assert code == 0, err
    code, out, err = _run([*args, "channel", "close", cid], capsys)
    assert code == 0 and "closed: provider paid" in out, err
    code, _, err = _run([*args, "channel", "close", cid[:10]], capsys)
    assert code == 1
    _one_clear_line(err)
    assert f"channel {cid} is already closed: nothing to close" in err
    code, _, err = _run([*args, "channel", "topup", cid, "--amount", "1000"], capsys)
    assert code == 1 and "is already closed: nothing to top up" in err


def test_no_contract_at_the_escrow_address_is_said_plainly(
    args: list[str], accounts: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    i = args.index("--escrow")
    wrong = [*args[:i], "--escrow", accounts.provider.address, *args[i + 2 :]]
    code, _, err = _run(
        [*wrong, "channel", "open", "--model", "fake-model", "--deposit", "1000"], capsys
    )
    assert code == 1
    _one_clear_line(err)
    assert f"there is no contract at --escrow {accounts.provider.address}" in err
