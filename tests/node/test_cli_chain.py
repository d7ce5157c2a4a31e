"""``tallystick-node`` listing, earnings and status commands against anvil and the real contracts.

Each command's success changes the chain as it says; each failure is one ``error:`` line on
stderr naming the contract's custom error (or the setting at fault), a non-zero exit code,
and no traceback.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner, Result
from eth_account import Account
from tallystick.node.cli import main
from tallystick.protocol import ETH, Receipt, model_id, sign_receipt

from tests.kit.chain import key_hex
from tests.kit.node import chain_args

pytestmark = pytest.mark.chain

NAME = "fake-model"
HASH = "0x" + "ab" * 32


@pytest.fixture
def cli(anvil: Any, deployment: Any, accounts: Any, tmp_path: Any) -> Any:
    """``cli(command, *args, account=provider)``: run a command with the chain options."""

    def run(*args: str, account: Any = None) -> Result:
        base = chain_args(anvil.url, deployment, account or accounts.provider, tmp_path / "n.db")
        return CliRunner().invoke(main, [args[0], *base, *args[1:]])

    return run


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    assert result.stderr == "", result.stderr
    return result.stdout


def warned(result: Result) -> str:
    """Success, with only ``warning:`` lines on stderr."""
    assert result.exit_code == 0, result.output
    assert all(line.startswith("warning: ") for line in result.stderr.splitlines()), result.stderr
    return result.stdout


def fails(result: Result, code: int, *fragments: str) -> str:
    """One ``error:`` line on stderr containing every fragment; no traceback, no key."""
    assert result.exit_code == code, (result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    # serve logs its pre-checks' warnings (registration, listing) before the error
    lines = [x for x in result.stderr.strip().splitlines() if "level=warning" not in x]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.output
    return lines[0]


LIST = ("--model-name", NAME, "--tokenizer-hash", HASH, "--context-length", "2048")
PRICE = ("--input-price", "100", "--output-price", "300")


def test_register_list_reprice_delist_and_status(cli, deployment, accounts):
    registry, provider = deployment.registry, accounts.provider.address
    assert "NOT registered" in ok(cli("status"))
    fails(
        cli("list-model", *LIST, *PRICE),
        1,
        "[RegistryNotRegistered]",
        "is not a registered provider: run tallystick-node register",
    )
    fails(cli("register", "--endpoint", ""), 2, "the endpoint must not be empty")
    fails(cli("register", "--endpoint", "http://node.example"), 2, "must be an https:// URL")
    assert registry.get_provider(provider).registered is False
    # no node answers at these endpoints yet: a warning each, and the registration goes on
    assert f"registered {provider} at https://node.example" in warned(
        cli("register", "--endpoint", "https://node.example")
    )
    assert "endpoint updated to https://node2.example" in warned(
        cli("register", "--endpoint", "https://node2.example", "--yes")
    )
    assert "endpoint updated to http://127.0.0.1:8000" in warned(
        cli("register", "--endpoint", "http://127.0.0.1:8000", "--yes")  # a node on this machine
    )
    assert registry.get_provider(provider).endpoint == "http://127.0.0.1:8000"

    out = ok(cli("list-model", *LIST, *PRICE))
    assert f"listed {NAME} (modelId 0x{model_id(NAME).hex()}, tokenizerHash {HASH}" in out
    listing = registry.get_listing(provider, model_id(NAME))
    assert (listing.input_price_per_m, listing.output_price_per_m) == (100, 300)
    assert listing.tokenizer_hash == bytes.fromhex(HASH[2:]) and listing.context_length == 2048

    assert (
        "fake-model: 0.000000000000000007 ETH / 1M input tokens, "
        "0.000000000000000009 ETH / 1M output tokens"
    ) in ok(cli("set-price", "--model-name", NAME, "--input-price", "7", "--output-price", "9"))
    listing = registry.get_listing(provider, model_id(NAME))
    assert (listing.input_price_per_m, listing.output_price_per_m) == (7, 9)
    fails(
        cli("set-price", "--model-name", "other", "--input-price", "1", "--output-price", "1"),
        1,
        "[RegistryModelNotListed]",
        "tallystick-node list-model",
    )
    status = ok(cli("status"))
    assert "registered at http://127.0.0.1:8000" in status and NAME in status

    assert f"delisted {NAME}" in ok(cli("delist", "--model-name", NAME))
    assert not registry.is_listed(provider, model_id(NAME))
    fails(cli("delist", "--model-name", "other"), 1, "[RegistryModelNotListed]")


def test_listing_arguments_are_checked_before_any_transaction(cli):
    fails(
        cli("list-model", "--model-name", NAME, *PRICE, "--context-length", "9"), 2, "exactly one"
    )
    short_hash = ("--tokenizer-hash", "0x12", "--context-length", "1")
    fails(
        cli("list-model", "--model-name", NAME, *short_hash, *PRICE),
        2,
        "--tokenizer-hash must be 32 bytes",
    )
    fails(
        cli("list-model", "--model-name", NAME, "--tokenizer-hash", HASH, *PRICE),
        2,
        "--context-length",
    )
    fails(cli("list-model", "--model", "/no/such/model.gguf", *PRICE), 2, "does not exist")
    fails(cli("set-price", *PRICE), 2, "--model PATH or --model-name")
    result = cli("list-model", *LIST, "--input-price", "-1", "--output-price", "1")
    assert result.exit_code == 2 and "Traceback" not in result.output  # click's range check
    fails(cli("list-model", *LIST, *PRICE, "--token", "0xnot-an-address"), 2, "token")


def test_withdraw_pays_out_claimed_earnings(cli, deployment, accounts, w3):
    registry, escrow = deployment.registry, deployment.escrow
    provider, client = accounts.provider, accounts.client
    fails(cli("withdraw"), 1, "[EscrowNothingToWithdraw]", "no claimed earnings in ETH to withdraw")
    registry.register(provider, "http://node.example")
    prices = _prices()
    registry.list_model(provider, NAME, prices, tokenizer_hash=bytes(32), context_length=2048)
    limits = {
        "token": ETH,
        "max_input_price_per_m": prices.input_per_m,
        "max_output_price_per_m": prices.output_per_m,
    }
    cid = bytes(escrow.open(client, provider.address, model_id(NAME), 10**15, **limits).value)
    receipt = Receipt(cid, 1000, 500, b"\x01" * 32)
    escrow.claim(provider, sign_receipt(client, escrow.domain, receipt))
    earned = escrow.earnings(provider.address, ETH)
    assert earned > 0
    to = accounts.other.address
    before = w3.eth.get_balance(to)
    assert earned == 2 * 10**9
    assert "withdrew 0.000000002 ETH" in ok(cli("withdraw", "--to", to))
    assert w3.eth.get_balance(to) - before == earned
    assert escrow.earnings(provider.address, ETH) == 0
    assert "nothing to claim" in ok(cli("settle"))


def test_amounts_in_the_tokens_own_units_and_withdraw_by_symbol(cli, deployment, accounts):
    """Issue 13: prices typed and shown in USDC, status in USDC, withdraw --token USDC."""
    registry, escrow, usdc = deployment.registry, deployment.escrow, deployment.usdc
    provider, client = accounts.provider, accounts.client
    registry.register(provider, "http://node.example")
    fails(cli("list-model", *LIST, *PRICE, "--token", "USDC"), 2, "no payment token", "USDC")
    fails(
        cli(
            "list-model",
            *LIST,
            "--input-price",
            "0.2",
            "--output-price",
            "1",
            "--token",
            "0x" + "ab" * 20,
        ),
        2,
        "ambiguous",
    )
    out = ok(
        cli(
            "list-model",
            *LIST,
            "--input-price",
            "0.20USDC",
            "--output-price",
            "1.5 USDC",
            "--token",
            usdc.address,
        )
    )
    assert "0.20 USDC / 1M input tokens, 1.50 USDC / 1M output tokens" in out
    listing = registry.get_listing(provider.address, model_id(NAME))
    assert (listing.input_price_per_m, listing.output_price_per_m) == (200_000, 1_500_000)
    fails(
        cli("set-price", "--model-name", NAME, "--input-price", "1ETH", "--output-price", "1"),
        2,
        "is in ETH but this amount is paid in USDC",
    )
    out = ok(
        cli(
            "set-price", "--model-name", NAME, "--input-price", "1USDC", "--output-price", "2000000"
        )
    )
    assert "1.00 USDC / 1M input tokens, 2.00 USDC / 1M output tokens" in out

    usdc.mint(client, client.address, 10 * 10**6)
    limits = {
        "token": usdc.address,
        "max_input_price_per_m": 10**6,
        "max_output_price_per_m": 2 * 10**6,
    }
    cid = bytes(escrow.open(client, provider.address, model_id(NAME), 5 * 10**6, **limits).value)
    # 1M input + 0.25M output tokens: 1 + 0.5 = 1.5 USDC
    escrow.claim(
        provider, sign_receipt(client, escrow.domain, Receipt(cid, 10**6, 250_000, b"\x01" * 32))
    )
    status = " ".join(ok(cli("status")).split())
    assert "1 USDC" in status and "1.5 USDC" in status and "5 USDC" in status
    # Ids whole in the tables (80 columns here), and the same as JSON.
    assert "…" not in status and usdc.address in status
    data = json.loads(ok(cli("status", "--json")))
    assert data["listings"][0]["symbol"] == "USDC"
    assert data["earnings"][usdc.address]["withdrawable"] == "1500000"
    assert f"withdrew 1.5 USDC ({usdc.address})" in ok(cli("withdraw", "--token", "usdc"))
    assert usdc.balance_of(provider.address) == 1_500_000
    fails(cli("withdraw", "--token", "DAI"), 2, "no payment token with the symbol 'DAI'", "USDC")


def test_chain_and_key_errors_are_one_line(cli, anvil, deployment, accounts, tmp_path):
    stranger = Account.create()
    fails(cli("list-model", *LIST, *PRICE, account=stranger), 1, "[RegistryNotRegistered]")
    fails(cli("delist", "--model-name", NAME, account=stranger), 1, "[RegistryModelNotListed]")
    db = str(tmp_path / "x.db")
    base = ["--escrow", deployment.escrow.address, "--registry", deployment.registry.address]
    down = ["--rpc", "http://127.0.0.1:9", *base, "--key", key_hex(accounts.provider), "--db", db]
    for command in (["status"], ["settle"], ["withdraw"], ["delist", "--model-name", NAME]):
        fails(CliRunner().invoke(main, [*command, *down]), 1, "cannot reach the chain")
    bad_key = ["--rpc", anvil.url, *base, "--key", "0x1234", "--db", db]
    line = fails(CliRunner().invoke(main, ["status", *bad_key]), 2, "--key", "64 hex")
    assert "1234" not in line
    typo = key_hex(accounts.provider)[:-1] + "z"
    line = fails(
        CliRunner().invoke(main, ["status", "--rpc", anvil.url, *base, "--key", typo]), 2, "--key"
    )
    assert typo[2:20] not in line
    no_key = ["--rpc", anvil.url, *base, "--db", db]
    fails(CliRunner().invoke(main, ["status", *no_key], env={}), 2, "--key HEX or --keystore")
    missing = CliRunner().invoke(main, ["status", "--key", key_hex(accounts.provider)], env={})
    fails(missing, 2, "--rpc is required")


def test_serve_refuses_a_wrong_chain_setup_in_one_line(anvil, deployment, accounts, tmp_path):
    key = key_hex(accounts.provider)
    common = ["--key", key, "--db", str(tmp_path / "s.db"), "--engine", "upstream"]
    common += ["--model", str(tmp_path), "--upstream-url", "http://127.0.0.1:9"]
    not_contract = accounts.other.address
    escrow, registry = deployment.escrow.address, ["--registry", deployment.registry.address]
    result = CliRunner().invoke(
        main,
        ["serve", "--rpc", anvil.url, "--escrow", not_contract, *registry, *common],
    )
    fails(result, 2, "--escrow", "no contract at this address")
    swapped = CliRunner().invoke(
        main,
        ["serve", "--rpc", anvil.url, "--escrow", escrow, "--registry", escrow, *common],
    )
    fails(swapped, 2, "--registry", "is not the escrow's registry")
    down = CliRunner().invoke(
        main,
        ["serve", "--rpc", "http://127.0.0.1:9", "--escrow", escrow, *registry, *common],
    )
    fails(down, 1, "cannot reach the chain")


def _prices() -> Any:
    from tallystick.protocol import Prices

    return Prices(10**12, 2 * 10**12)


@pytest.mark.parametrize(
    ("engine_args", "fragment"),
    [
        (["--engine", "upstream", "--model", "m"], "--upstream-url URL"),
        (["--engine", "upstream", "--model", "m", "--upstream-url", "ftp://x"], "http(s) URL"),
        (["--engine", "upstream", "--upstream-url", "http://127.0.0.1:9"], "--model PATH"),
        ([], "--model PATH"),
    ],
)
def test_serve_checks_engine_options_first(engine_args, fragment, tmp_path):
    # No chain is reachable at this RPC: the engine options are checked before connecting.
    chain = ["--rpc", "http://127.0.0.1:9", "--escrow", ETH, "--registry", ETH]
    key = ["--key", "0x" + "11" * 32, "--db", str(tmp_path / "s.db")]
    result = CliRunner().invoke(main, ["serve", *chain, *key, *engine_args])
    fails(result, 2, fragment)


def test_serve_reports_a_missing_model_in_one_line(anvil, deployment, accounts, tmp_path):
    args = chain_args(anvil.url, deployment, accounts.provider, tmp_path / "s.db")
    result = CliRunner().invoke(main, ["serve", *args, "--model", str(tmp_path / "no.gguf")])
    fails(result, 2, "--model", "does not exist")
