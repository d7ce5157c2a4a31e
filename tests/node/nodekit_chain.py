"""Helpers for node tests on anvil: CLI arguments, free ports, waiting for a node process."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx


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


class RawChannel:
    """Drives one channel by hand as the SDK would: signs each request (§4.3) for the next
    seq after the last countersigned root, and countersigns what it is served."""

    def __init__(self, account: Any, domain: Any, channel_id: bytes) -> None:
        from tallystick.protocol import ZERO_ROOT

        self.account, self.domain, self.channel_id = account, domain, channel_id
        self.seq, self.root = 0, ZERO_ROOT

    def headers(self, method: str, path: str, body: bytes = b"") -> dict[str, str]:
        from tallystick.protocol import RequestAuth, sign_request_auth

        auth = RequestAuth.for_request(
            self.channel_id, self.seq + 1, self.root, method, path, body, 60
        )
        return {"Authorization": sign_request_auth(self.account, self.domain, auth).header()}

    def post(
        self, http: httpx.Client, path: str, body: Any, receipt: dict[str, Any] | None = None
    ) -> httpx.Response:
        """POST ``body`` (JSON) signed; ``receipt`` is piggybacked and signed after."""
        import json

        raw = json.dumps(body).encode()
        if receipt is not None:
            self.root = bytes.fromhex(receipt["usageRoot"][2:])
        headers = {"content-type": "application/json", **self.headers("POST", path, raw)}
        if receipt is not None:
            headers["X-Tally-Receipt"] = json.dumps(receipt)
        return http.post(path, content=raw, headers=headers)

    def get(self, http: httpx.Client, path: str) -> httpx.Response:
        return http.get(path, headers=self.headers("GET", path))

    def served(self, body: dict[str, Any]) -> dict[str, Any]:
        """Note a response's seq (the next request follows it, countersigned or not)."""
        self.seq = int(body["tallystick"]["record"]["seq"])
        return body

    def countersign(self, body: dict[str, Any], *, delivered: bool = True) -> dict[str, Any]:
        """The receipt of a response; ``delivered``: the next request signs after it."""
        from tallystick.protocol import Receipt, UsageRecord, sign_receipt

        record = UsageRecord.from_json(body["tallystick"]["record"])
        root = record.usage_root()
        receipt = Receipt(self.channel_id, record.input_tokens, record.output_tokens, root)
        self.seq = record.seq
        if delivered:
            self.root = root
        return sign_receipt(self.account, self.domain, receipt).to_json()
