"""A Web3 on one or several RPC URLs (failover), checked to serve one chain."""

from __future__ import annotations

from collections.abc import Sequence

import requests
from web3 import Web3
from web3.exceptions import Web3RPCError

from .._errors import ChainError, ChainUnavailable
from .._rpc import FailoverHTTPProvider, OnFailure, split_rpc_urls


def connect(
    rpc_url: str | Sequence[str],
    timeout_s: float = 30.0,
    *,
    on_failure: OnFailure | None = None,
) -> Web3:
    """A Web3 on one or several RPC URLs (``"a,b"`` or a list) that answered ``eth_chainId``.

    Its provider is a ``FailoverHTTPProvider``: a URL that fails at the transport is counted
    (``provider.failures``, ``on_failure``) and the request goes to the next one. Answers are
    depth-checked before they are parsed: ``ChainError`` if nested too deeply. Every URL that
    answers must serve the same chain id (``ChainError`` otherwise); ``ChainUnavailable``
    when none answers.
    """
    urls = split_rpc_urls(rpc_url)
    provider = FailoverHTTPProvider(
        urls, request_kwargs={"timeout": timeout_s}, on_failure=on_failure
    )
    w3 = Web3(provider)
    try:
        w3.eth.chain_id  # noqa: B018 (the call is the reachability check)
    except (requests.RequestException, OSError, ValueError, Web3RPCError) as exc:
        raise ChainUnavailable(
            f"cannot reach the chain at {', '.join(urls)}: {why_unreachable(exc, timeout_s)}"
        ) from exc
    _same_chain(urls, timeout_s)
    return w3


def why_unreachable(exc: BaseException, timeout_s: float) -> str:
    """The reason under a transport failure, short: ``connection refused``, not urllib3's
    ``HTTPConnectionPool(host=…): Max retries exceeded … NewConnectionError(…)``."""
    if isinstance(exc, requests.Timeout):
        return f"no answer within {timeout_s:g} s"
    todo: list[object] = [exc]
    seen: set[int] = set()
    while todo:
        e = todo.pop(0)
        if id(e) in seen or not isinstance(e, BaseException):
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.strerror:
            return e.strerror[0].lower() + e.strerror[1:]
        todo += [e.__cause__, e.__context__, getattr(e, "reason", None), *e.args]
    return str(exc)


def _same_chain(urls: list[str], timeout_s: float) -> None:
    # Failing over to an RPC of another chain would sign for, and read, the wrong chain.
    if len(urls) < 2:
        return
    seen: dict[int, str] = {}
    for url in urls:
        try:
            one = FailoverHTTPProvider([url], request_kwargs={"timeout": timeout_s})
            chain_id = Web3(one).eth.chain_id
        except (requests.RequestException, OSError, ValueError, Web3RPCError, ChainError):
            continue  # down now: failover will skip it too
        seen.setdefault(int(chain_id), url)
    if len(seen) > 1:
        detail = ", ".join(f"{u} is chain {c}" for c, u in seen.items())
        raise ChainError(f"the RPC URLs serve different chains: {detail}")
