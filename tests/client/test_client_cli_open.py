"""``tallystick channel open`` on the real node and anvil: price caps and a front-run refused."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from tallystick.client import Chain
from tallystick.client.cli import main
from tallystick.protocol import Prices, model_id

from tests.kit.client import cli_args, run_cli

pytestmark = pytest.mark.chain
PRICES = Prices(input_per_m=3_000_000_000, output_per_m=9_000_000_000)
DEPOSIT = 10**15


@pytest.fixture
def args(deployment: Any, accounts: Any, anvil: Any, tmp_path: Path, node_server: Any) -> list[str]:
    """The CLI's global options for ``accounts.client``, with a real node listed at PRICES."""
    node_server(prices=PRICES)
    return cli_args(anvil.url, deployment, accounts.client, tmp_path / "c.db")


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_channel_open_prints_the_snapshot_prices_and_honours_the_caps(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    open_ = [*args, "channel", "open", "--model", "fake-model", "--deposit", str(DEPOSIT)]
    code, _, err = run_cli([*open_, "--max-output-price", str(PRICES.output_per_m - 1)], capsys)
    assert code == 1 and err.count("\n") == 1 and "within the price limits" in err
    code, out, _ = run_cli([*open_, "--max-output-price", str(PRICES.output_per_m)], capsys)
    assert code == 0
    # ETH has 18 decimals: 3e9 wei per million tokens is 0.000000003 ETH.
    assert "deposit 0.001 ETH" in out
    assert "prices 0.000000003 ETH / 1M input tokens, 0.000000009 ETH / 1M output tokens" in out


def test_channel_open_refuses_a_price_raised_before_the_transaction(
    args: list[str],
    deployment: Any,
    accounts: Any,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    raised = Prices(PRICES.input_per_m * 2, PRICES.output_per_m)
    original = Chain.open_channel

    def open_after_price_change(self: Chain, *a: Any, **kw: Any) -> Any:
        deployment.registry.set_price(accounts.provider, model_id("fake-model"), raised)
        return original(self, *a, **kw)

    monkeypatch.setattr(Chain, "open_channel", open_after_price_change)
    nonce = len(deployment.escrow.channels_opened())
    open_ = [*args, "channel", "open", "--model", "fake-model", "--deposit", str(DEPOSIT)]
    code, _, err = run_cli(open_, capsys)
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert f"accepted input {PRICES.input_per_m} / output {PRICES.output_per_m}" in err
    assert f"now input {raised.input_per_m} / output {raised.output_per_m}" in err
    assert "nothing was deposited" in err
    assert len(deployment.escrow.channels_opened()) == nonce


USDC_PRICES = Prices(input_per_m=200_000, output_per_m=1_500_000)  # 0.20 / 1.50 USDC


@pytest.fixture
def usdc_args(
    deployment: Any, accounts: Any, anvil: Any, tmp_path: Path, node_server: Any
) -> list[str]:
    """Global options for ``accounts.client`` (holding 100 USDC), a node listed in MockUSDC."""
    deployment.usdc.mint(accounts.client, accounts.client.address, 100 * 10**6)
    node_server(prices=USDC_PRICES, token=deployment.usdc.address)
    return cli_args(anvil.url, deployment, accounts.client, tmp_path / "c.db")


def test_amounts_in_the_tokens_own_units(
    usdc_args: list[str], deployment: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 13: symbol and decimals read on-chain; 1.5USDC, '1.5 USDC' and base units accepted,
    a bare decimal and another token's symbol refused before anything is sent."""
    code, out, _ = run_cli([*usdc_args, "providers"], capsys)
    assert code == 0 and "0.2 USDC" in out and "1.5 USDC" in out
    open_ = [*usdc_args, "channel", "open", "--model", "fake-model", "--deposit"]
    for bad, says in [
        ("1.5", "ambiguous"),
        ("1.5ETH", "is in ETH but this amount is paid in USDC"),
        ("1.0000001USDC", "more decimals than USDC has (6)"),
        ("lots", "is not an amount"),
    ]:
        code, _, err = run_cli([*open_, bad], capsys)
        assert code == 2 and says in " ".join(err.split()), (bad, err)
    assert deployment.escrow.channels_opened() == []
    code, out, _ = run_cli([*open_, "1.5USDC"], capsys)
    assert code == 0, out
    assert "deposit 1.5 USDC" in out
    assert "0.20 USDC / 1M input tokens, 1.50 USDC / 1M output tokens" in out
    cid = out.split("opened channel ")[1].split()[0]
    assert deployment.escrow.get_channel(bytes.fromhex(cid[2:])).deposit == 1_500_000
    code, out, _ = run_cli([*usdc_args, "channel", "topup", cid, "--amount", "0.5 USDC"], capsys)
    assert code == 0 and "deposit now 2 USDC" in out
    code, out, _ = run_cli([*usdc_args, "channel", "topup", cid, "--amount", "250000"], capsys)
    assert code == 0 and "deposit now 2.25 USDC" in out
    code, out, _ = run_cli([*usdc_args, "channel", "list"], capsys)
    assert code == 0 and "2.25 USDC" in out
    code, out, _ = run_cli([*usdc_args, "channel", "close", cid], capsys)
    assert code == 0 and "provider paid 0 USDC, refunded 2.25 USDC" in out


def test_ids_are_whole_take_prefixes_and_listings_have_json(
    usdc_args: list[str], deployment: Any, accounts: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 13: ids are never cut in tables (the test terminal is 80 columns), any unique
    prefix is taken for a channel or a provider, and every listing has --json."""
    provider = accounts.provider.address
    open_ = [*usdc_args, "channel", "open", "--model", "fake-model", "--deposit", "1USDC"]
    code, out, _ = run_cli([*open_, "--provider", provider[:8]], capsys)  # a provider prefix
    assert code == 0, out
    cid = out.split("opened channel ")[1].split()[0]
    code, _, err = run_cli([*open_, "--provider", "0xdeadbeef"], capsys)
    assert code == 1 and "no registered provider's address starts with 0xdeadbeef" in err
    for command in (["providers"], ["channel", "list"], ["bill"]):
        code, out, _ = run_cli([*usdc_args, *command], capsys)
        assert code == 0 and "…" not in out, (command, out)
    code, out, _ = run_cli([*usdc_args, "providers"], capsys)
    assert provider in out and deployment.usdc.address in out
    code, out, _ = run_cli([*usdc_args, "channel", "list"], capsys)
    assert cid in out and provider in out
    code, out, _ = run_cli([*usdc_args, "channel", "topup", cid[:10], "--amount", "1USDC"], capsys)
    assert code == 0 and f"channel {cid}: deposit now 2 USDC" in out
    code, raw, _ = _run_raw([*usdc_args, "providers", "--json"], capsys)
    (offer,) = json.loads(raw)
    assert offer["provider"] == provider and offer["symbol"] == "USDC"
    assert offer["inputPerMillion"] == str(USDC_PRICES.input_per_m) and offer["decimals"] == 6
    assert offer["failedAuditsPublished"] == 0
    # A failed audit another client published on-chain shows in the listing (issue 15).
    mid = model_id("fake-model")
    deployment.registry.report_audit(accounts.client, provider, mid, b"\x0d" * 32, "https://r/1")
    code, raw, _ = _run_raw([*usdc_args, "providers", "--json"], capsys)
    assert json.loads(raw)[0]["failedAuditsPublished"] == 1
    code, out, _ = run_cli([*usdc_args, "providers"], capsys)
    assert code == 0 and "failed" in out and re.search(r"│ 1 +│", out), out
    code, raw, _ = _run_raw([*usdc_args, "channel", "list", "--json"], capsys)
    (row,) = json.loads(raw)
    assert row["channelId"] == cid and row["deposit"] == "2000000" and row["status"] == "open"
    code, raw, _ = _run_raw([*usdc_args, "bill", "--json", "--channel", cid[:8]], capsys)
    (bill,) = json.loads(raw)
    assert bill["channelId"] == cid and bill["lines"] == [] and bill["symbol"] == "USDC"
    code, out, _ = run_cli([*usdc_args, "channel", "close", cid[:12]], capsys)
    assert code == 0 and "refunded 2 USDC" in out


def _run_raw(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = 0
    try:
        main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_rpc_without_a_scheme_and_a_refused_one(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 13: ``--rpc localhost:8545`` works; ``ws://`` is a usage error naming --rpc."""
    url = args[1]
    no_scheme = [*args[:1], url.removeprefix("http://"), *args[2:]]
    code, out, _ = run_cli([*no_scheme, "providers"], capsys)
    assert code == 0 and "fake-model" in out
    code, _, err = run_cli([*args[:1], "ws://127.0.0.1:1", *args[2:], "providers"], capsys)
    assert code == 2 and "--rpc" in err and "only http:// and https://" in " ".join(err.split())
