"""The demo's ``--keep`` panel: what it leaves running is usable from the file it writes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from tallystick.devnet import Market, Processes
from tallystick.devnet._demo import DemoOptions, DemoRun
from tallystick.devnet._report import print_keep

pytestmark = pytest.mark.chain


def test_keep_writes_a_private_env_file_the_clis_read(
    anvil: Any, w3: Any, accounts: Any, deployment: Any, tmp_path: Path
) -> None:
    console = Console(record=True, width=200)
    procs = Processes()
    sleeper = procs.start("node", [sys.executable, "-c", "import time; time.sleep(60)"])
    run = DemoRun(DemoOptions(keep=True), console, tmp_path, procs)
    run._market = Market(anvil.url, w3, deployment, accounts.deployer)
    run.rpc, run.endpoint = anvil.url, "http://127.0.0.1:1"
    try:
        print_keep(run)
        env_file = tmp_path / "demo.env"
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600  # keys inside
        exported = dict(
            line.removeprefix("export ").split("=", 1) for line in env_file.read_text().splitlines()
        )
        assert exported["TALLYSTICK_ESCROW"] == deployment.escrow.address
        assert exported["TALLYSTICK_NODE_KEY"] == "0x" + bytes(run.provider.key).hex()
        text = console.export_text()
        assert f"kill -- -{sleeper.popen.pid}" in text and f"source {env_file}" in text
        # The client CLI reads the file's settings: a fresh key has no channels on that escrow.
        done = subprocess.run(
            ["bash", "-c", f"source {env_file} && {sys.executable} -c "
             "'from tallystick.client.cli import main; main([\"channel\", \"list\"])'"],
            capture_output=True, text=True, timeout=120, check=False,
            env={**os.environ, "COLUMNS": "200"},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    finally:
        procs.stop_all()
