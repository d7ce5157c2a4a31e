"""The chain side of the kit: a real anvil, its dev accounts, the deployed contracts, a market.

Fixtures:
- ``anvil``: one anvil process per session (free port, fixed mnemonic, chain id 31337),
  started by ``tallystick.devnet`` as the demo and the bench start theirs.
- ``w3``: a Web3 connected to it; ``accounts``: its dev keys as LocalAccounts.
- ``deployment``: ProviderRegistry, TallyEscrow (challenge period 3600 s) and MockUSDC,
  deployed once per session; every test that uses it runs between ``evm_snapshot`` and
  ``evm_revert``, so it sees a fresh chain state.
- ``advance_time(seconds)``: move chain time forward and mine a block.
- ``market``: ``deployment`` with ``accounts.provider`` registered at a free port and listing
  ``fake-model`` (the tiny tokenizer) at ``PRICES`` in ETH: what a node process
  (``tests/kit/node.py: start_node``) serves.
- ``rpc_proxy``: a cuttable TCP relay to anvil (``tests/kit/net.py: TcpProxy``).

Helpers: ``start_anvil`` (another chain), ``register_and_list`` / ``list_model`` (a provider
and its listing), ``open_eth_channel``, ``key_hex``, and the front-run of a transaction in the
victim's own block.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from tallystick.client import Chain
from tallystick.devnet import Anvil
from tallystick.protocol import ETH, Prices

from tests.kit.net import TcpProxy, free_port, wait_for

MNEMONIC = "test test test test test test test test test test test junk"
CHAIN_ID = 31337
N_ACCOUNTS = 10
CHALLENGE_PERIOD = 3600
MODEL = "fake-model"  # what FakeEngine serves; listed with the tiny tokenizer
PRICES = Prices(input_per_m=1_000_000_000, output_per_m=3_000_000_000)  # 1000 / 3000 wei a token


# --- anvil ---


def anvil_binary() -> str:
    """anvil (node_modules/.bin first); skips the test when there is none."""
    from tallystick.devnet import DevnetError, find_anvil

    try:
        return find_anvil()
    except DevnetError as exc:
        pytest.skip(f"{exc} (run `make setup`)")


@contextlib.contextmanager
def start_anvil(chain_id: int = CHAIN_ID, mnemonic: str = MNEMONIC) -> Iterator[Anvil]:
    """An anvil of its own on a free port (``tallystick.devnet.start_anvil``), stopped on exit
    with its process group; the ``anvil`` fixture is one."""
    from tallystick.devnet import Processes
    from tallystick.devnet import start_anvil as devnet_anvil

    anvil_binary()  # skip, not fail, without one
    with Processes() as procs:
        yield devnet_anvil(procs, chain_id=chain_id, mnemonic=mnemonic, accounts=N_ACCOUNTS)


@pytest.fixture(scope="session")
def anvil() -> Iterator[Anvil]:
    """A real local chain for the whole session."""
    with start_anvil() as chain:
        yield chain


@pytest.fixture(scope="session")
def w3(anvil: Anvil) -> Any:
    """A Web3 connected to the session's anvil."""
    from tallystick.protocol import connect

    return connect(anvil.url)


# --- accounts ---


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


def key_hex(account: Any) -> str:
    """``0x``-prefixed private key of a LocalAccount (as the CLIs take it)."""
    return "0x" + account.key.hex().removeprefix("0x")


# --- the contracts ---


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


def list_model(
    deployment: Any,
    provider: Any,
    model: str = MODEL,
    prices: Prices = PRICES,
    *,
    tokenizer_hash: bytes | None = None,
    context_length: int = 2048,
    token: str | None = None,
) -> bytes:
    """``provider`` lists ``model`` at ``prices`` (in ``token``, default ETH) through
    ``tallystick.devnet.list_model``; the tokenizer hash defaults to the tiny tokenizer's
    (FakeEngine's). Returns the model id."""
    from tallystick.devnet import list_model as devnet_list

    if tokenizer_hash is None:
        from tallystick.node.engines import tiny_tokenizer_bundle

        tokenizer_hash = tiny_tokenizer_bundle().hash()
    return devnet_list(
        deployment,
        provider,
        model,
        prices,
        tokenizer_hash=tokenizer_hash,
        context_length=context_length,
        token=token,
    )


def register_and_list(
    deployment: Any,
    provider: Any,
    endpoint: str,
    model: str = MODEL,
    prices: Prices = PRICES,
    **listing: Any,
) -> bytes:
    """Register ``provider`` at ``endpoint`` and list ``model`` (keywords as ``list_model``)."""
    from tallystick.devnet import register_provider

    register_provider(deployment, provider, endpoint)
    return list_model(deployment, provider, model, prices, **listing)


def open_eth_channel(
    deployment: Any,
    client: Any,
    provider: Any,
    model: str = MODEL,
    prices: Prices = PRICES,
    deposit: int = 10**17,
    **kwargs: Any,
) -> bytes:
    """``client`` opens an ETH channel to ``provider`` for ``model``, accepting ``prices`` as
    its maximum; returns the channel id (``kwargs`` go to ``Escrow.open``, e.g. ``salt``)."""
    from tallystick.protocol import model_id

    opened = deployment.escrow.open(
        client,
        provider.address,
        model_id(model),
        deposit,
        token=ETH,
        max_input_price_per_m=prices.input_per_m,
        max_output_price_per_m=prices.output_per_m,
        **kwargs,
    )
    return bytes(opened.value)


# --- the market: contracts, a registered provider, a listing ---


@dataclass
class Market:
    """The contracts with ``accounts.provider`` registered at ``endpoint`` (port ``port``)."""

    deployment: Any
    accounts: Any
    anvil: Any
    w3: Any
    port: int

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def escrow(self) -> Any:
        return self.deployment.escrow

    @property
    def registry(self) -> Any:
        return self.deployment.registry

    def chain(self) -> Chain:
        return Chain(self.w3, self.registry.address, self.escrow.address)

    def earnings(self) -> int:
        return int(self.escrow.earnings(self.accounts.provider.address))


@pytest.fixture
def market(deployment: Any, accounts: Any, anvil: Any, w3: Any) -> Market:
    """``accounts.provider`` registered at a free port, listing ``MODEL`` at ``PRICES``."""
    port = free_port()
    register_and_list(deployment, accounts.provider, f"http://127.0.0.1:{port}")
    return Market(deployment, accounts, anvil, w3, port)


@pytest.fixture
def rpc_proxy(anvil: Any) -> Iterator[TcpProxy]:
    """A relay to anvil that a test can cut, black-hole and restore."""
    port = int(anvil.url.rsplit(":", 1)[1])
    proxy = TcpProxy(port)
    yield proxy
    proxy.close()


# --- a front-run in the victim's own block ---


def send_outbidding(w3: Any, account: Any, fn: Any, tip_gwei: int = 100) -> bytes:
    """Send ``fn`` with a priority fee that puts it first in the next block; do not wait."""
    base = int(w3.eth.get_block("latest")["baseFeePerGas"])
    tip = tip_gwei * 10**9
    tx = fn.build_transaction(
        {
            "from": account.address,
            "nonce": w3.eth.get_transaction_count(account.address, "pending"),
            "gas": 200_000,
            "maxPriorityFeePerGas": tip,
            "maxFeePerGas": 2 * base + tip,
        }
    )
    return bytes(w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction))


def same_block_front_run(w3: Any, victim: Callable[[], Any], front_run: Callable[[], Any]) -> Any:
    """Run ``victim`` (one transaction, awaited) with automining off; once its transaction is in
    the mempool, ``front_run`` sends one that outbids it, and a single block mines both.

    This is the attack itself: a provider who watches the mempool gets its transaction mined
    before the client's, in the same block. Returns what ``victim`` returned, or raises its error.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = victim()
        except BaseException as exc:  # handed to the test's thread below
            outcome["error"] = exc

    w3.provider.make_request("evm_setAutomine", [False])
    thread = threading.Thread(target=run, daemon=True)
    try:
        thread.start()
        wait_for(lambda: _pending(w3) >= 1 or not thread.is_alive(), 30, "the victim's tx")
        if thread.is_alive():
            front_run()
            wait_for(lambda: _pending(w3) >= 2, 10, "the front-running tx")
            w3.provider.make_request("evm_mine", [])
    finally:
        w3.provider.make_request("evm_setAutomine", [True])
        thread.join(30)
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def _pending(w3: Any) -> int:
    return int(w3.provider.make_request("txpool_status", [])["result"]["pending"], 16)
