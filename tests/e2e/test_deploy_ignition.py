"""Hardhat Ignition deploys the contracts to an anvil chain; node and SDK read the addresses.

``scripts/deploy.sh --dev`` (Ignition, ``ignition/modules/TallystickDev.js``) against a fresh
anvil with a chain id of its own, the network taken from TALLY_RPC_URL / TALLY_DEPLOYER_KEY.
Then the addresses file of that chain id is read by the protocol, by ``tallystick-node
register --deployments`` and by ``Chain.connect(deployments=)``, and the deployed contracts
work. The gas of each step is printed (docs/deploy.md quotes it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from tallystick.client import Chain
from tallystick.node.cli import main as node_cli
from tallystick.protocol import (
    DeploymentNotFound,
    Escrow,
    Registry,
    Token,
    connect,
    read_deployment,
)

from tests.kit.chain import start_anvil

pytestmark = pytest.mark.chain

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENTS = ROOT / "ignition" / "deployments"
CHAIN_ID = 31_000 + os.getpid() % 1000  # a chain of its own: its own deployment folder


@pytest.fixture
def chain(anvil: Any) -> Iterator[str]:
    """An anvil of its own (same binary and mnemonic as the session's) with ``CHAIN_ID``."""
    try:
        with start_anvil(CHAIN_ID, anvil.mnemonic) as own:
            yield own.url
    finally:
        shutil.rmtree(DEPLOYMENTS / f"chain-{CHAIN_ID}", ignore_errors=True)


def _deploy(url: str, key: Any, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "TALLY_RPC_URL": url,
        "TALLY_CHAIN_ID": str(CHAIN_ID),
        "TALLY_DEPLOYER_KEY": "0x" + key.hex().removeprefix("0x"),
        "HARDHAT_IGNITION_CONFIRM_DEPLOYMENT": "1",  # no prompt: this is a test chain
    }
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "deploy.sh"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )


def test_ignition_deploys_and_node_and_sdk_read_the_addresses_by_chain_id(
    chain: str, accounts: Any, tmp_path: Path
) -> None:
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"Tallystick": {"challengePeriod": 7200}}))
    done = _deploy(chain, accounts.deployer.key, "--dev", "--parameters", str(params))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    found = read_deployment(DEPLOYMENTS, CHAIN_ID)
    w3 = connect(chain)
    escrow = Escrow(w3, found.escrow)
    assert escrow.registry.address == found.registry
    assert escrow.challenge_period() == 7200
    assert escrow.domain.chain_id == CHAIN_ID
    assert found.token is not None and Token(w3, found.token).decimals() == 6

    # The node reads the addresses for the RPC's chain id.
    key = "0x" + accounts.provider.key.hex().removeprefix("0x")
    run = CliRunner().invoke(
        node_cli,
        ["register", "--rpc", chain, "--deployments", str(DEPLOYMENTS), "--key", key,
         "--endpoint", "https://node.example"],
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    registry = Registry(w3, found.registry)
    assert registry.get_provider(accounts.provider.address).endpoint == "https://node.example"
    # So does the SDK.
    sdk = Chain.connect(chain, deployments=DEPLOYMENTS)
    assert (sdk.escrow.address, sdk.registry.address) == (found.escrow, found.registry)

    # The gas of each step, from Ignition's journal.
    journal = DEPLOYMENTS / f"chain-{CHAIN_ID}" / "journal.jsonl"
    steps = [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]
    gas = {
        s["futureId"]: int(w3.eth.get_transaction_receipt(s["hash"])["gasUsed"])
        for s in steps
        if s["type"] == "TRANSACTION_CONFIRM"
    }
    print("\ndeploy gas per step:", json.dumps(gas))
    assert set(gas) == {
        "Tallystick#ProviderRegistry",
        "Tallystick#TallyEscrow",
        "TallystickDev#MockUSDC",
    }
    assert all(g > 21_000 for g in gas.values())

    # Deploying again is a no-op: Ignition resumes from its journal.
    again = _deploy(chain, accounts.deployer.key, "--dev", "--parameters", str(params))
    assert again.returncode == 0 and read_deployment(DEPLOYMENTS, CHAIN_ID) == found


def test_a_chain_without_a_deployment_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "chain-5").mkdir()
    with pytest.raises(DeploymentNotFound, match=r"no deployment for chain 7 .*found: chain-5"):
        read_deployment(tmp_path, 7)
    (tmp_path / "chain-7").mkdir()
    (tmp_path / "chain-7" / "deployed_addresses.json").write_text(
        json.dumps({"Tallystick#ProviderRegistry": "0x" + "11" * 20})
    )
    with pytest.raises(DeploymentNotFound, match="no TallyEscrow"):
        read_deployment(tmp_path, 7)
