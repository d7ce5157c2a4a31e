"""A chain RPC endpoint answering deeply nested JSON cannot crash the process (``connect``).

A real HTTP server on localhost plays the RPC; web3 8's own HTTP provider sends the requests.
The hostile answer goes to a subprocess (with web3 imported, its recursion limit of 100000 set)
because without the guard json's C decoder would overflow the C stack: a segfault.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from tallystick.protocol import ChainError, connect

DEEP = 200_000


class _Rpc(BaseHTTPRequestHandler):
    deep = False

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if self.deep:
            nested = "[" * DEEP + "]" * DEEP
            body = f'{{"jsonrpc":"2.0","id":{request["id"]},"result":{nested}}}'.encode()
        else:
            body = json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": "0x7a69"}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def serve(deep: bool) -> Iterator[str]:
    handler = type("Handler", (_Rpc,), {"deep": deep})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def honest_rpc() -> Iterator[str]:
    yield from serve(deep=False)


@pytest.fixture
def deep_rpc() -> Iterator[str]:
    yield from serve(deep=True)


def test_an_ordinary_answer_is_decoded(honest_rpc: str) -> None:
    assert connect(honest_rpc, timeout_s=5).eth.chain_id == 31337


def test_a_deep_answer_is_a_chain_error(deep_rpc: str) -> None:
    # Safe in-process: the guard refuses before json recurses.
    with pytest.raises(ChainError, match="nested too deeply"):
        connect(deep_rpc, timeout_s=5)


_ATTACK = """
import sys
import web3
from tallystick.protocol import ChainError, connect
assert sys.getrecursionlimit() >= 100000
try:
    connect(sys.argv[1], timeout_s=10)
except ChainError as exc:
    print("refused:", exc)
print("alive")
"""


def test_a_deep_answer_does_not_kill_the_process(deep_rpc: str) -> None:
    command = [sys.executable, "-c", _ATTACK, deep_rpc]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=os.environ)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.startswith("refused: the chain RPC answered with JSON nested too deeply")
    assert done.stdout.strip().endswith("alive")
