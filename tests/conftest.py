"""Fixtures shared by every test: a real local chain (anvil), its dev accounts, a fresh
deployment of the contracts, and the path of the real model.

- ``anvil``: one anvil process per session (free port, fixed mnemonic, chain id 31337).
- ``w3``: a Web3 connected to it; ``accounts``: its dev keys as LocalAccounts.
- ``deployment``: ProviderRegistry, TallyEscrow (challenge period 3600 s) and MockUSDC,
  deployed once per session; every test that uses it runs between ``evm_snapshot`` and
  ``evm_revert``, so it sees a fresh chain state.
- ``postgres``: a throw-away PostgreSQL cluster per session (``bench/_postgres.py``); ``pg_url``: a
  fresh empty database on it.
- ``model_dir``: the SmolLM2 GGUF folder (skips when absent).
Options: ``--long`` runs the soak tests marked ``slow``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `bench` (shared kit: PostgreSQL cluster, front) is top-level
    sys.path.insert(0, str(ROOT))
ANVIL = ROOT / "node_modules" / ".bin" / "anvil"
MNEMONIC = "test test test test test test test test test test test junk"
CHAIN_ID = 31337
N_ACCOUNTS = 10
CHALLENGE_PERIOD = 3600
MODEL_DIR = ROOT / ".models" / "SmolLM2-135M-Instruct"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--long", action="store_true", help="also run slow soak tests")


def pytest_configure(config: pytest.Config) -> None:
    # Also declared in pyproject.toml; repeated so a run from another rootdir knows them.
    config.addinivalue_line("markers", "chain: needs a local chain (anvil)")
    config.addinivalue_line("markers", "model: needs the real SmolLM2-135M-Instruct weights")
    config.addinivalue_line("markers", "slow: long soak runs (run with --long)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--long"):
        return
    skip = pytest.mark.skip(reason="soak test: run with --long")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


# --- chain ---


@dataclass(frozen=True)
class Anvil:
    """A running anvil: its RPC URL, chain id and mnemonic."""

    url: str
    chain_id: int
    mnemonic: str
    process: subprocess.Popen[bytes]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_until_answering(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    import httpx

    body = {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"anvil exited with code {process.returncode}")
        try:
            if httpx.post(url, json=body, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.02)
    raise RuntimeError(f"anvil did not answer on {url} within {timeout} s")


@pytest.fixture(scope="session")
def anvil() -> Iterator[Anvil]:
    """A real local chain for the whole session."""
    binary = str(ANVIL) if ANVIL.exists() else shutil.which("anvil")
    if binary is None:
        pytest.skip("anvil not found (node_modules/.bin/anvil): run `make setup`")
    port = _free_port()
    cmd = [binary, "--port", str(port), "--silent", "--chain-id", str(CHAIN_ID)]
    cmd += ["--mnemonic", MNEMONIC, "--accounts", str(N_ACCOUNTS)]
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_answering(url, process, timeout=30.0)
        yield Anvil(url=url, chain_id=CHAIN_ID, mnemonic=MNEMONIC, process=process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def w3(anvil: Anvil) -> Any:
    """A Web3 connected to the session's anvil."""
    from tallystick.protocol import connect

    return connect(anvil.url)


@dataclass(frozen=True)
class DevAccounts:
    """anvil's dev keys as LocalAccounts, with names for the roles tests use."""

    all: tuple[Any, ...]

    @property
    def deployer(self) -> Any:
        return self.all[0]

    @property
    def provider(self) -> Any:
        return self.all[1]

    @property
    def client(self) -> Any:
        return self.all[2]

    @property
    def client2(self) -> Any:
        return self.all[3]

    @property
    def provider2(self) -> Any:
        return self.all[4]

    @property
    def other(self) -> Any:
        return self.all[5]

    def __getitem__(self, index: int) -> Any:
        return self.all[index]

    def __len__(self) -> int:
        return len(self.all)


@pytest.fixture(scope="session")
def accounts(anvil: Anvil) -> DevAccounts:
    """deployer, provider, client, client2, provider2, other, then the rest by index."""
    from eth_account import Account

    Account.enable_unaudited_hdwallet_features()
    keys = [
        Account.from_mnemonic(anvil.mnemonic, account_path=f"m/44'/60'/0'/0/{i}")
        for i in range(N_ACCOUNTS)
    ]
    return DevAccounts(tuple(keys))


@pytest.fixture(scope="session")
def _session_deployment(w3: Any, accounts: DevAccounts) -> Any:
    from tallystick.protocol import deploy

    return deploy(w3, accounts.deployer, challenge_period=CHALLENGE_PERIOD)


@pytest.fixture
def deployment(w3: Any, _session_deployment: Any) -> Iterator[Any]:
    """The contracts, in a chain state that this test alone sees (snapshot, then revert)."""
    snapshot = w3.provider.make_request("evm_snapshot", [])["result"]
    try:
        yield _session_deployment
    finally:
        w3.provider.make_request("evm_revert", [snapshot])


@pytest.fixture
def advance_time(w3: Any) -> Any:
    """``advance_time(seconds)``: move chain time forward and mine a block at the new time.

    ``evm_increaseTime`` alone only affects the next mined block, so calls and gas estimates
    would still see the old timestamp; the ``evm_mine`` makes the jump visible at once.
    """

    def advance(seconds: int) -> int:
        w3.provider.make_request("evm_increaseTime", [int(seconds)])
        w3.provider.make_request("evm_mine", [])
        return int(w3.eth.get_block("latest")["timestamp"])

    return advance


# --- PostgreSQL ---


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """A throw-away PostgreSQL cluster for the session (``bench/_postgres.py``)."""
    from bench._postgres import PgCluster

    cluster = PgCluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(postgres: Any) -> str:
    """The URL of an empty database on the session's cluster."""
    return str(postgres.new_database())


# --- model ---


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """Folder holding the SmolLM2-135M-Instruct GGUF (``model_file`` names the file)."""
    if not (MODEL_DIR / MODEL_FILE).exists():
        pytest.skip(f"model not found at {MODEL_DIR / MODEL_FILE}: run `make model`")
    return MODEL_DIR


@pytest.fixture(scope="session")
def model_file(model_dir: Path) -> str:
    """File name of the GGUF inside ``model_dir``."""
    return MODEL_FILE


@pytest.fixture(scope="session")
def llama_server_bin() -> Path:
    """The llama-server binary `make llama` builds (``make test`` builds it first; in CI a
    missing one fails rather than skips)."""
    from tallystick.node.engines import built_llama_server

    binary = built_llama_server()
    if not binary.is_file():
        message = f"llama-server not built at {binary}: run `make llama`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return binary


# --- browser ---


@pytest.fixture
def chromium() -> Iterator[Any]:
    """A real headless Chromium (Debian's ``chromium`` package, installed by scripts/setup.sh)
    driven by Playwright; per test, since Playwright's sync API owns an event loop while open."""
    from playwright.sync_api import sync_playwright

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.fail("chromium is not installed: run scripts/setup.sh (apt-get install chromium)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=binary, headless=True, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def screenshot(tmp_path: Path) -> Any:
    """``screenshot(page, name)``: keep what the browser rendered under the test's tmp_path."""

    def take(page: Any, name: str) -> Path:
        path = tmp_path / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")
        return path

    return take


def pytest_report_header(config: pytest.Config) -> str:
    return f"tallystick: anvil={'yes' if ANVIL.exists() else 'missing'}, cpu={os.cpu_count()}"
