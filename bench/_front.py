"""A round-robin HTTP front: one endpoint before several node replicas (benches and tests).

Each request goes to the next backend, as a load balancer would. A backend that refuses the
connection is skipped (the request was never sent); when none accepts, the answer is 503. A
backend that fails after the request was sent resets the client's connection, mid-answer
or before it: the outcome is unknown, so the client must not be told "refused" (a 502 would
make the SDK drop a request the replica may have billed). Answers are relayed as they arrive
(SSE streams stream). ``served[url]`` counts the answers each backend gave.
"""

from __future__ import annotations

import contextlib
import http.server
import itertools
import socket
import struct
import threading
from typing import Any

import httpx

__all__ = ["RoundRobinFront", "reset_connection"]

_HOP = {"connection", "keep-alive", "transfer-encoding", "host", "content-length", "upgrade"}


class RoundRobinFront:
    """``RoundRobinFront(port, ["http://127.0.0.1:p1", ...])``; ``close()`` stops it."""

    def __init__(self, port: int, backends: list[str]) -> None:
        self.backends = backends
        self.served = dict.fromkeys(backends, 0)
        self._next = itertools.cycle(range(len(backends)))
        self._lock = threading.Lock()
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
        self._http = httpx.Client(timeout=httpx.Timeout(600.0, connect=2.0), limits=limits)
        front = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                front._forward(self)

            def do_POST(self) -> None:
                front._forward(self)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def _order(self) -> list[str]:
        with self._lock:
            first = next(self._next)
        return [self.backends[(first + i) % len(self.backends)] for i in range(len(self.backends))]

    def _forward(self, handler: Any) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in _HOP}
        for backend in self._order():
            request = self._http.build_request(
                handler.command, backend + handler.path, headers=headers, content=body
            )
            try:
                response = self._http.send(request, stream=True)
            except httpx.ConnectError:
                continue  # never sent: try the next replica
            except httpx.HTTPError:
                reset_connection(handler.connection)
                return
            try:
                self._relay(handler, response)
                with self._lock:
                    self.served[backend] += 1
            except (httpx.HTTPError, OSError):
                # died mid-answer: the client sees a broken reply
                reset_connection(handler.connection)
            finally:
                response.close()
            return
        handler.send_error(503, "no replica accepted the connection")

    def _relay(self, handler: Any, response: httpx.Response) -> None:
        # HTTP/1.0 to the client: the body ends when the connection closes, so a replica that
        # dies mid-answer leaves the client a cut (reset) answer, never a complete-looking one.
        handler.send_response(response.status_code)
        for key, value in response.headers.items():
            if key.lower() not in _HOP:
                handler.send_header(key, value)
        handler.send_header("Connection", "close")
        handler.end_headers()
        for chunk in response.iter_raw():
            handler.wfile.write(chunk)
            handler.wfile.flush()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._http.close()


def reset_connection(sock: socket.socket) -> None:
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
