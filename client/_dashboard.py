"""``tallystick dashboard``: a local page of what this wallet spent, over time and per provider.

A standard-library HTTP server (the light SDK has no web framework) on 127.0.0.1 serves
``dashboard.html`` and ``/data?since=7d``, read from the store on every request: spend per
bucket of time and per provider, per token (amounts of different tokens are never added),
and the channels with their deposits. Nothing leaves the machine; no key is loaded.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tallystick.protocol import TokenInfo, format_amount, parse_since

from ._store import Store
from ._usage import spend, spend_lines

__all__ = ["DashboardServer", "dashboard_data"]

_BUCKETS = (60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400)


def dashboard_data(
    store: Store, tokens: Callable[[str], TokenInfo], since: float, now: float | None = None
) -> dict[str, Any]:
    """Spend over time (per provider and token) and per provider, and the channels."""
    now = time.time() if now is None else now
    bucket = next((b for b in _BUCKETS if (now - since) / b <= 60), _BUCKETS[-1])
    lines = spend_lines(store, since)
    cache: dict[str, TokenInfo] = {}

    def money(amount: int, token: str) -> dict[str, Any]:
        info = cache.setdefault(token, tokens(token))
        return {
            "base": str(amount),
            "value": amount / 10**info.decimals,
            "text": format_amount(amount, info),
            "symbol": info.symbol,
        }

    series: dict[tuple[float, str, str], int] = {}
    for line in lines:
        key = (float(int(line.at // bucket) * bucket), line.provider, line.token)
        series[key] = series.get(key, 0) + line.cost
    return {
        "since": since,
        "now": now,
        "bucketSeconds": bucket,
        "overTime": [
            {"start": start, "provider": provider, "token": token, "amount": money(v, token)}
            for (start, provider, token), v in sorted(series.items())
        ],
        "perProvider": [
            {**row, "amount": money(row["cost"], row["token"]), "cost": str(row["cost"])}
            for row in spend(lines, ("provider", "model"))
        ],
        "channels": [
            {
                "channelId": c.hex_id,
                "provider": c.provider,
                "model": c.model,
                "status": c.status.label,
                "deposit": money(c.deposit, c.token),
                "spent": money(sum(b.cost for b in store.bill(c.channel_id)), c.token),
            }
            for c in store.channels()
        ],
    }


class DashboardServer:
    """The page and its data on ``host:port`` (a thread; ``with DashboardServer(...) as d``)."""

    def __init__(
        self, store_path: Path, tokens: Callable[[str], TokenInfo], host: str, port: int
    ) -> None:
        handler = _handler(store_path, tokens)
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> DashboardServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler(store_path: Path, tokens: Callable[[str], TokenInfo]) -> type[BaseHTTPRequestHandler]:
    page = resources.files("tallystick.client").joinpath("dashboard.html").read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path in ("/", "/dashboard"):
                self._send(200, page, "text/html; charset=utf-8")
            elif url.path == "/data":
                self._data(parse_qs(url.query).get("since", ["30d"])[0])
            else:
                self._send(404, b'{"error": "not found"}', "application/json")

        def _data(self, since: str) -> None:
            try:
                start = parse_since(since)
            except ValueError as exc:
                body = json.dumps({"error": str(exc).replace("--since", "since")}).encode()
                self._send(400, body, "application/json")
                return
            store = Store(store_path)
            try:
                body = json.dumps(dashboard_data(store, tokens, start)).encode()
            finally:
                store.close()
            self._send(200, body, "application/json")

        def _send(self, status: int, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("content-type", kind)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # no access log on the terminal the command runs in

    return Handler
