"""Several RPC URLs: failover between them, every failure counted (real anvil, real sockets)."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from tallystick.protocol import (
    ChainError,
    ChainUnavailable,
    FailoverHTTPProvider,
    connect,
    rpc_label,
    split_rpc_urls,
)

pytestmark = pytest.mark.chain


def _dead_url() -> str:
    with socket.socket() as s:  # bound then closed: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class _Answering(http.server.BaseHTTPRequestHandler):
    status = 502
    chain_id = "0x1"

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        request = json.loads(self.rfile.read(length))
        body = json.dumps({"jsonrpc": "2.0", "id": request.get("id"), "result": self.chain_id})
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Any]:
    """An HTTP server answering every JSON-RPC call with ``Handler.status`` / ``chain_id``."""
    handler = type("Handler", (_Answering,), {})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"  # type: ignore[attr-defined]
    httpd.handler = handler  # type: ignore[attr-defined]
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_a_refused_url_fails_over_to_the_next_and_is_counted(anvil: Any) -> None:
    dead = _dead_url()
    failed: list[tuple[str, str]] = []
    w3 = connect(
        f"{dead}, {anvil.url}", on_failure=lambda label, kind, exc: failed.append((label, kind))
    )
    provider = w3.provider
    assert isinstance(provider, FailoverHTTPProvider)
    assert w3.eth.chain_id == anvil.chain_id
    label = rpc_label(0, dead)
    assert failed == [(label, "connection")]
    assert provider.failures == {(label, "connection"): 1}
    assert provider.current_url == anvil.url  # it stays on the URL that answered
    w3.eth.block_number  # noqa: B018
    assert provider.failures == {(label, "connection"): 1}
    # batches fail over too
    assert isinstance(provider.make_batch_request([("eth_chainId", [])] * 3), list)


def test_an_http_error_and_a_timeout_fail_over(anvil: Any, server: Any) -> None:
    w3 = connect([server.url, anvil.url], timeout_s=2)
    assert w3.eth.chain_id == anvil.chain_id
    assert w3.provider.failures == {(rpc_label(0, server.url), "http_502"): 1}
    # A black hole: accepted, never answered; the timeout moves the request on.
    hole = socket.create_server(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{hole.getsockname()[1]}"
    try:
        w3 = connect([url, anvil.url], timeout_s=0.5)
        assert w3.eth.chain_id == anvil.chain_id
        assert w3.provider.failures == {(rpc_label(0, url), "timeout"): 1}
    finally:
        hole.close()


def test_every_url_down_is_chain_unavailable_naming_them() -> None:
    a, b = _dead_url(), _dead_url()
    with pytest.raises(ChainUnavailable, match="cannot reach the chain") as info:
        connect([a, b])
    assert a in str(info.value) and b in str(info.value)


def test_urls_of_different_chains_are_refused(anvil: Any, server: Any) -> None:
    server.handler.status = 200  # a healthy RPC, but of chain 1
    with pytest.raises(ChainError, match="serve different chains"):
        connect([anvil.url, server.url])


def test_split_and_label() -> None:
    assert split_rpc_urls(" http://a:1 ,http://b:2/key ") == ["http://a:1", "http://b:2/key"]
    assert rpc_label(1, "https://rpc.example/v2/SECRETKEY") == "1:rpc.example"
    with pytest.raises(ValueError, match="no RPC URL"):
        split_rpc_urls(" , ")


def test_rpc_urls_without_a_scheme_are_completed(anvil: Any) -> None:
    """Issue 13: ``--rpc localhost:8545`` used to fail with "No connection adapters were found"."""
    port = anvil.url.rsplit(":", 1)[1]
    assert split_rpc_urls(f"localhost:{port}") == [f"http://localhost:{port}"]
    assert split_rpc_urls("rpc.example:443/key") == ["https://rpc.example:443/key"]
    assert int(connect(f"127.0.0.1:{port}").eth.chain_id) == 31337
    with pytest.raises(ValueError, match=r"only http:// and https://.*not ws://"):
        split_rpc_urls("ws://127.0.0.1:8545")
    with pytest.raises(ValueError, match="has no host"):
        split_rpc_urls(":8545")
