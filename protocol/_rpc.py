"""The HTTP provider every Tallystick Web3 uses: depth-checked answers, several RPC URLs.

``FailoverHTTPProvider(urls)`` sends each request to its current URL; when that URL fails
at the transport (refused, reset, timed out, an HTTP error status, an answer too deep to
parse), it counts the failure, moves to the next URL and sends the same request there, each
URL at most once per request. It stays on the URL that answered (no flapping back); the
error of the last URL is raised when every one failed. JSON-RPC errors (a revert, a nonce
too low) are answers, not failures: they are returned as they are.

A transaction resent to the next URL after the first took it but failed to answer comes
back as "already known" or "nonce too low": the caller's receipt wait decides (the hash is
the same).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import requests
from eth_typing import URI
from web3 import HTTPProvider
from web3._utils.batching import sort_batch_response_by_response_ids
from web3.types import RPCEndpoint, RPCResponse

from ._errors import ChainError
from ._untrusted import json_too_deep

__all__ = ["FailoverHTTPProvider", "rpc_label", "split_rpc_urls"]

OnFailure = Callable[[str, str, BaseException], None]  # (url label, error kind, error)


def split_rpc_urls(value: str | Sequence[str]) -> list[str]:
    """``"a, b"`` or ``["a", "b"]`` -> ``["a", "b"]``; ValueError when none is given.

    A URL without a scheme gets one: ``localhost:8545`` -> ``http://localhost:8545`` on this
    machine (loopback), ``rpc.example:443`` -> ``https://rpc.example:443`` elsewhere. Other
    schemes (``ws://``, ``ftp://``) are refused with a ValueError saying what is accepted.
    """
    items = value.split(",") if isinstance(value, str) else list(value)
    urls = [_with_scheme(u.strip()) for u in items if u.strip()]
    if not urls:
        raise ValueError("no RPC URL given")
    return urls


def _with_scheme(url: str) -> str:
    from ._endpoint import is_loopback

    if "://" not in url:
        host = urlsplit("//" + url).hostname
        if not host:
            raise ValueError(f"RPC URL {url!r} has no host: give e.g. http://127.0.0.1:8545")
        return ("http://" if is_loopback(host) else "https://") + url
    scheme = url.split("://", 1)[0].lower()
    if scheme not in ("http", "https"):
        raise ValueError(
            f"RPC URL {url!r}: only http:// and https:// JSON-RPC URLs are supported "
            f"(not {scheme}://), e.g. http://127.0.0.1:8545"
        )
    return url


def rpc_label(index: int, url: str) -> str:
    """``"0:host:port"``: names an RPC in logs and metrics without its path (API keys)."""
    parts = urlsplit(url)
    return f"{index}:{parts.hostname or '?'}" + (f":{parts.port}" if parts.port else "")


class FailoverHTTPProvider(HTTPProvider):
    """web3's HTTP provider over several URLs, failing over between them (module docstring)."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        request_kwargs: dict[str, Any] | None = None,
        on_failure: OnFailure | None = None,
    ) -> None:
        self.urls = list(urls)
        super().__init__(self.urls[0], request_kwargs=request_kwargs)
        self.labels = [rpc_label(i, u) for i, u in enumerate(self.urls)]
        self.failures: Counter[tuple[str, str]] = Counter()  # (label, kind) -> count
        # JSON-RPC error answers (a revert, a nonce too low, out of gas money), by code: answers,
        # not failures (no failover), counted so an operator sees them
        self.errors: Counter[tuple[str, str]] = Counter()  # (label, code) -> count
        self._on_failure = on_failure
        self._current = 0
        self._lock = threading.Lock()

    @staticmethod
    def decode_rpc_response(raw_response: bytes) -> Any:
        # An RPC endpoint is another party; web3 raised the recursion limit json's C decoder
        # trusts, so ~200,000 ``[`` would crash the process instead of raising.
        if json_too_deep(raw_response):
            raise ChainError("the chain RPC answered with JSON nested too deeply to parse")
        return HTTPProvider.decode_rpc_response(raw_response)

    def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        response: RPCResponse = super().make_request(method, params)
        error = response.get("error") if isinstance(response, dict) else None
        if error is not None:
            code = str(error.get("code", "?")) if isinstance(error, dict) else "?"
            with self._lock:
                self.errors[(self.labels[self._current], code)] += 1
        return response

    @property
    def current_url(self) -> str:
        return self.urls[self._current]

    def _make_request(self, method: RPCEndpoint, request_data: bytes) -> bytes:
        if len(self.urls) == 1:
            return super()._make_request(method, request_data)  # web3's own retries
        raw: bytes = self._each_url(method, lambda url: self._post(url, request_data))
        return raw

    def make_batch_request(
        self, batch_requests: list[tuple[RPCEndpoint, Any]]
    ) -> list[RPCResponse] | RPCResponse:
        data = self.encode_batch_rpc_request(batch_requests)
        method = RPCEndpoint("batch")

        def send(url: str) -> Any:
            return self.decode_rpc_response(self._post(url, data))

        response = self._each_url(method, send)
        if not isinstance(response, list):
            return response  # the whole batch was refused: one error object
        return sort_batch_response_by_response_ids(response)

    def _post(self, url: str, data: bytes) -> bytes:
        raw: bytes = self._request_session_manager.make_post_request(
            URI(url), data, **self.get_request_kwargs()
        )
        return raw

    def _each_url(self, method: str, send: Callable[[str], Any]) -> Any:
        with self._lock:
            start = self._current
        error: BaseException | None = None
        for step in range(len(self.urls)):
            index = (start + step) % len(self.urls)
            try:
                result = send(self.urls[index])
            except (requests.RequestException, OSError, ChainError) as exc:
                self._failed(index, method, exc)
                error = exc
                continue
            if index != start:
                with self._lock:
                    self._current = index
            return result
        assert error is not None
        raise error

    def _failed(self, index: int, method: str, exc: BaseException) -> None:
        kind = _kind(exc)
        with self._lock:
            self.failures[(self.labels[index], kind)] += 1
        if self._on_failure is not None:
            self._on_failure(self.labels[index], kind, exc)


def _kind(exc: BaseException) -> str:
    if isinstance(exc, requests.Timeout):
        return "timeout"
    if isinstance(exc, requests.HTTPError):
        status = exc.response.status_code if exc.response is not None else 0
        return f"http_{status}"
    if isinstance(exc, ChainError):
        return "bad_answer"
    return "connection"
