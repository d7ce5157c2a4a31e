"""``register`` and ``serve`` check before they act: the URL, /health, replacing a
registration, the port, the registration of what is served, and whose ledger it is."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from click.testing import CliRunner, Result
from eth_account import Account
from tallystick.node import Settings, create_app
from tallystick.node._ledger import open_ledger
from tallystick.node._preflight import bind_ledger, registration_warnings
from tallystick.node.cli import main
from tallystick.node.engines import FakeEngine
from tallystick.protocol import Prices

from tests.kit.net import ThreadServer, free_port
from tests.kit.node import chain_args

pytestmark = pytest.mark.chain


@pytest.fixture
def cli(anvil: Any, deployment: Any, accounts: Any, tmp_path: Any) -> Any:
    def run(*args: str, account: Any = None, input: str | None = None) -> Result:
        base = chain_args(anvil.url, deployment, account or accounts.provider, tmp_path / "n.db")
        return CliRunner().invoke(main, [args[0], *base, *args[1:]], input=input)

    return run


def _error(result: Result, code: int) -> str:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in result.output
    return lines[-1]


def test_register_refuses_what_is_not_a_url_before_the_chain(cli, deployment, accounts):
    for bad in ("not-a-url", "", "ftp://node.example", "https://", "http://127.0.0.1:99999"):
        line = _error(cli("register", "--endpoint", bad), 2)
        assert "not a URL" in line or "must not be empty" in line, line
    assert "https://" in _error(cli("register", "--endpoint", "http://node.example"), 2)
    assert deployment.registry.get_provider(accounts.provider.address).registered is False


def test_register_warns_when_health_is_down_and_asks_before_replacing(cli, deployment, accounts):
    registry, me = deployment.registry, accounts.provider.address
    first = f"http://127.0.0.1:{free_port()}"
    r = cli("register", "--endpoint", first + "/")
    assert r.exit_code == 0, r.output
    assert f"warning: {first}/health does not answer" in r.stderr
    assert registry.get_provider(me).endpoint == first  # the trailing slash dropped

    r = cli("register", "--endpoint", first)
    assert r.exit_code == 0 and "already registered" in r.stdout and "tx" not in r.stdout

    second = f"http://127.0.0.1:{free_port()}"
    r = cli("register", "--endpoint", second, input="n\n")
    assert f"is registered at {first}; replace it with {second}?" in r.stderr
    assert "not replaced" in _error(r, 2)
    assert registry.get_provider(me).endpoint == first
    r = cli("register", "--endpoint", second, input="y\n")
    assert r.exit_code == 0 and registry.get_provider(me).endpoint == second
    r = cli("register", "--endpoint", first, "--yes")
    assert r.exit_code == 0 and "?" not in r.stderr
    assert registry.get_provider(me).endpoint == first


def test_register_probes_a_running_node(cli, anvil, deployment, accounts, tmp_path):
    settings = Settings(
        rpc=anvil.url,
        escrow=deployment.escrow.address,
        registry=deployment.registry.address,
        key="0x" + accounts.provider.key.hex().removeprefix("0x"),
        db=tmp_path / "node.db",
    )
    with ThreadServer(create_app(settings, engine=FakeEngine(), run_worker=False)) as node:
        r = cli("register", "--endpoint", node.url)
        assert r.exit_code == 0 and r.stderr == "", r.output
        other = Account.create()
        w3 = deployment.registry.w3
        w3.eth.send_transaction(
            {"from": accounts.deployer.address, "to": other.address, "value": 10**18}
        )
        r = cli("register", "--endpoint", node.url, account=other)
        assert f"serves as provider {accounts.provider.address}, not as {other.address}" in r.stderr


def test_serve_fails_fast_on_a_taken_port_before_loading_the_model(
    anvil, deployment, accounts, tmp_path
):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        base = chain_args(anvil.url, deployment, accounts.provider, tmp_path / "n.db")
        # The model does not exist: a check after the load would say that instead.
        args = ["serve", *base, "--model", str(tmp_path / "absent.gguf"), "--port", str(port)]
        line = _error(CliRunner().invoke(main, args), 2)
    assert f"cannot listen on 127.0.0.1:{port}: in use" in line


def test_serve_warns_about_the_registration(deployment, accounts):
    registry, me = deployment.registry, accounts.provider.address

    def at(port: int) -> Settings:
        return Settings(
            rpc="http://x",
            escrow=deployment.escrow.address,
            registry=registry.address,
            port=port,
        )

    settings = at(8123)
    (only,) = registration_warnings(registry, me, "fake-model", settings)
    assert "is not a registered provider" in only
    registry.register(accounts.provider, "http://127.0.0.1:8000")
    found = registration_warnings(registry, me, "fake-model", settings)
    assert any("does not list fake-model" in w for w in found)
    assert any("http://127.0.0.1:8000 is not this node (port 8123)" in w for w in found)
    registry.list_model(
        accounts.provider, "fake-model", Prices(1, 1), tokenizer_hash=bytes(32), context_length=8
    )
    assert registration_warnings(registry, me, "fake-model", at(8000)) == []
    registry.update_endpoint(accounts.provider, "https://node.example.com")  # behind a proxy
    assert registration_warnings(registry, me, "fake-model", settings) == []


def test_a_ledger_belongs_to_one_provider_key(cli, accounts, tmp_path):
    ledger = open_ledger(tmp_path / "n.db")
    bind_ledger(ledger, accounts.provider.address, "n.db", claim=True)
    bind_ledger(ledger, accounts.provider.address, "n.db", claim=True)  # ours: fine
    ledger.close()
    stranger = Account.create()
    line = _error(cli("status", account=stranger), 2)
    assert f"belongs to provider {accounts.provider.address}, not to this key" in line
    line = _error(cli("settle", account=stranger), 2)
    assert "belongs to provider" in line
    assert cli("status").exit_code == 0


def test_a_key_without_eth_is_told_to_fund_it_not_shown_an_rpc_error(cli):
    broke = Account.create()
    result = cli("register", "--endpoint", f"http://127.0.0.1:{free_port()}", account=broke)
    line = _error(result, 1)
    assert "has not enough ETH to pay this transaction's gas" in line
    assert "Web3RPCError" not in result.output and "-32003" not in line


def test_serve_without_a_chain_leaves_no_ledger_behind(deployment, accounts, tmp_path):
    down = f"http://127.0.0.1:{free_port()}"
    base = chain_args(down, deployment, accounts.provider, tmp_path / "n.db")
    args = ["serve", *base, "--model", str(tmp_path / "absent.gguf"), "--port", str(free_port())]
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    assert "error: " in result.stderr
    assert not (tmp_path / "n.db").exists()
