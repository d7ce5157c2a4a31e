"""Helpers for the reliability tests: the market, a node process, a cuttable TCP proxy.

- ``Market``: the contracts with ``accounts.provider`` registered at a free port, listing
  ``fake-model`` (the tiny tokenizer) at ``PRICES`` in ETH.
- ``NodeProcess``: ``tallystick-node serve`` as a subprocess (``_fake_node.py``: the real CLI
  with FakeEngine), which a test can SIGKILL and restart on the same ledger.
- ``TcpProxy``: a TCP relay (node -> anvil) that a test can cut, black-hole and restore.
(The round-robin front before node replicas is ``bench/_front.py``, shared with ``make bench``.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from tallystick.client import Chain
from tallystick.protocol import Prices

HERE = Path(__file__).resolve().parent
MODEL = "fake-model"
PRICES = Prices(input_per_m=1_000_000_000, output_per_m=3_000_000_000)  # 1000 / 3000 wei a token
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the market: contracts, a registered provider, a listing ---------------------------------


@dataclass
class Market:
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


# --- the node as a process -------------------------------------------------------------------


class NodeProcess:
    """``tallystick-node serve`` (FakeEngine) in a subprocess; its stderr goes to a log file."""

    def __init__(
        self,
        market: Market,
        workdir: Path,
        *,
        rpc: str | None = None,
        key_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        port: int | None = None,
        name: str = "node",
        script: str = "_fake_node.py",
    ) -> None:
        self.market = market
        self.script = HERE / script  # _cheating_node.py: the same node, padding its bills
        self.port = port or market.port
        self.db = workdir / f"{name}.db"
        self.log_path = workdir / f"{name}.log"
        self.rpc = rpc or market.anvil.url
        self._key_args = key_args
        self._env = env or {}
        self._args = args or []
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cmd = [sys.executable, str(self.script), "serve"]
        cmd += ["--rpc", self.rpc, "--escrow", self.market.escrow.address]
        cmd += ["--registry", self.market.registry.address, "--db", str(self.db)]
        cmd += ["--model-name", MODEL, "--port", str(self.port), "--log-format", "json"]
        cmd += ["--settle-interval", "1", "--claim-gas-multiple", "0"]
        return cmd + (self._key_args or []) + self._args

    def environment(self) -> dict[str, str]:
        env = {**os.environ, "TALLYSTICK_NODE_POLL_INTERVAL": "0.2"}
        env["TALLYSTICK_NODE_CHANNEL_CACHE_TTL"] = "0.5"
        if self._key_args is None:
            # The key travels in the environment, never on the command line (ps shows that).
            env["TALLYSTICK_NODE_KEY"] = self.market.accounts.provider.key.hex()
        env.update(self._env)
        return env

    def start(self, timeout: float = 60.0) -> NodeProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.environment()
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the node exited ({self.process.returncode}):\n{self.log()}")
            try:
                if httpx.get(self.url + "/v1/models", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError(f"the node did not answer within {timeout} s:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown handler, no flush, no goodbye."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


# --- a TCP proxy that can be cut -------------------------------------------------------------


class TcpProxy:
    """Relays 127.0.0.1:port to ``target``; a test can cut it or turn it into a black hole.

    - ``cut()``: every open connection is reset (RST) and new ones are reset on accept, as
      when the RPC process dies or its host goes down.
    - ``blackhole()``: connections stay open but nothing is forwarded either way, and new ones
      are accepted and never answered, as in a network partition or a wedged RPC server.
      Only the client's own timeouts can notice this.
    - ``restore()``: forwarding again; connections left over from a black hole are reset
      (their requests were dropped, as TCP would eventually give up on them too).
    """

    UP, CUT, BLACKHOLE = "up", "cut", "blackhole"

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.mode = self.UP
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut(self) -> None:
        self._switch(self.CUT)

    def blackhole(self) -> None:
        with self._lock:
            self.mode = self.BLACKHOLE

    def restore(self) -> None:
        self._switch(self.UP)

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._server.close()

    def _switch(self, mode: str) -> None:
        with self._lock:
            stale = self.mode != self.UP
            self.mode = mode
            # Restoring a cut proxy has nothing to reset; restoring a black hole resets the
            # connections whose requests it swallowed.
            if mode == self.CUT or stale:
                for conn in self._conns:
                    _reset(conn)
                self._conns.clear()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = None
            if self.mode == self.UP:
                try:
                    upstream = socket.create_connection(("127.0.0.1", self.target_port))
                except OSError:
                    _reset(client)
                    continue
            # Registered under the lock that cut() holds, so no connection escapes a cut.
            with self._lock:
                if self.mode == self.CUT or (self.mode == self.UP and upstream is None):
                    _reset(client)
                    if upstream is not None:
                        _reset(upstream)
                    continue
                pairs = [(client, upstream), (upstream, client)] if upstream else [(client, None)]
                self._conns.update(s for s in (client, upstream) if s is not None)
            for src, dst in pairs:
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket | None) -> None:
        try:
            while data := src.recv(65536):
                if dst is not None and self.mode == self.UP:
                    dst.sendall(data)  # in a black hole the bytes are dropped
        except OSError:
            pass
        finally:
            for s in (src, dst):
                if s is not None:
                    with self._lock:
                        self._conns.discard(s)
                    _reset(s)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` every 0.1 s; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def _reset(sock: socket.socket) -> None:
    """Abort ``sock`` with an RST, even while another thread is blocked in ``recv`` on it.

    close() alone is not enough: Linux keeps a socket open, silently ESTABLISHED, for as long
    as another thread is inside recv() on it, so a request in flight at the cut would wait for
    the client's read timeout instead of failing. shutdown(SHUT_RD) wakes that recv (it
    returns b"", sending nothing); the last close, with SO_LINGER 0, then sends the RST.
    """
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)
    with contextlib.suppress(OSError):
        sock.close()


# --- a front-run in the victim's own block ------------------------------------------------------


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


def signed_post(
    url: str,
    client: Any,
    info: Any,
    path: str,
    body: Any,
    *,
    seq: int | None = None,
    receipt: Any = None,
) -> httpx.Response:
    """POST ``body`` to a node signed by ``client``'s key for ``info`` (§4.3), by hand.

    ``seq`` defaults to the client's next one; a piggybacked ``receipt`` (a SignedReceipt)
    is sent along and the request is signed after its root, as the SDK does.
    """
    import json

    from tallystick.protocol import RequestAuth, sign_request_auth

    tally = client.store.tally(info.channel_id)
    raw = json.dumps(body).encode()
    root = receipt.receipt.usage_root if receipt is not None else tally.usage_root
    auth = RequestAuth.for_request(
        info.channel_id, tally.seq + 1 if seq is None else seq, root, "POST", path, raw, 60
    )
    signed = sign_request_auth(client.biller.signer(info), info.domain, auth)
    headers = {"content-type": "application/json", "Authorization": signed.header()}
    if receipt is not None:
        headers["X-Tally-Receipt"] = json.dumps(receipt.to_json())
    return httpx.post(f"{url}{path}", content=raw, headers=headers, timeout=30)


def signed_get(url: str, client: Any, info: Any, path: str) -> httpx.Response:
    """GET ``path`` signed by ``client`` for ``info`` (a read: channel view, record)."""
    header = client.biller.authorization(info, "GET", path, b"")
    return httpx.get(f"{url}{path}", headers={"Authorization": header}, timeout=30)
