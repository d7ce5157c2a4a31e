"""Helpers for node tests on anvil: CLI arguments, free ports, waiting for a node process."""

from __future__ import annotations

import socket
import subprocess
import threading
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


class Server:
    """A real uvicorn server for ``app`` in a thread (``with Server(app) as s: s.url``)."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
