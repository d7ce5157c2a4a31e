"""Helpers for node tests on anvil: CLI arguments, free ports, waiting for a node process."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

ETH = "0x0000000000000000000000000000000000000000"


def key_hex(account: Any) -> str:
    return "0x" + account.key.hex().removeprefix("0x")


def chain_args(rpc: str, deployment: Any, account: Any, db: Path) -> list[str]:
    """The chain options every ``tallystick-node`` command takes."""
    return [
        "--rpc",
        rpc,
        "--escrow",
        deployment.escrow.address,
        "--registry",
        deployment.registry.address,
        "--key",
        key_hex(account),
        "--db",
        str(db),
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Poll ``/health`` until the node answers; fail at once if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the node exited with code {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the node did not answer on {url} within {timeout} s")
