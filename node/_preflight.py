"""What ``serve`` and the other commands check before the slow or irreversible part.

- the port is free (before a model load of minutes, not after it);
- the key is registered, lists the model it is about to serve, at an endpoint that is this
  node (warnings: a node may be started before it registers);
- the ledger belongs to this provider key: a ledger holds one provider's records and
  receipts, and another key can neither claim them nor should show them as its own;
- ``register --endpoint``: a URL clients can reach, probed at ``/health``.
"""

from __future__ import annotations

import logging
import socket
from typing import Any
from urllib.parse import urlsplit

from tallystick.protocol import is_loopback, model_id

from ._errors import ConfigError
from ._ledger import LedgerStore, is_postgres_url
from ._ledger._postgres import redact_url
from ._settings import Settings

__all__ = [
    "bind_ledger",
    "check_endpoint_url",
    "check_port_free",
    "probe_health",
    "registration_warnings",
]

log = logging.getLogger("tallystick.node")

_PROVIDER_KEY = "provider"


def check_port_free(host: str, port: int) -> None:
    """``ConfigError`` when ``host:port`` cannot be bound now (taken, or not this machine's)."""
    if port == 0:
        return  # the system picks a free one
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # uvicorn sets SO_REUSEADDR too: a socket in TIME_WAIT does not count as taken.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            reason = "in use" if exc.errno in (98, 48) else (exc.strerror or str(exc))
            raise ConfigError(
                f"cannot listen on {host}:{port}: {reason} (another tallystick-node?); "
                "stop it or pick another --port"
            ) from None


def bind_ledger(ledger: LedgerStore, provider: str, location: str, *, claim: bool) -> None:
    """Refuse a ledger written for another provider key; ``claim``: mark a new one as ours."""
    owner = ledger.get_meta(_PROVIDER_KEY)
    if owner is None:
        if claim:
            ledger.set_meta(_PROVIDER_KEY, provider)
        return
    if owner.lower() != provider.lower():
        if is_postgres_url(location):
            location = redact_url(location)  # never a password in a message
        raise ConfigError(
            f"the ledger {location} belongs to provider {owner}, not to this key {provider}: "
            "its records and receipts are that provider's; give this key its own --db/--ledger"
        )


def registration_warnings(
    registry: Any, provider: str, model: str | None, settings: Settings
) -> list[str]:
    """What is off in this key's registration for serving ``model`` here (may be empty)."""
    info = registry.get_provider(provider)
    if not info.registered:
        return [
            f"{provider} is not a registered provider: clients cannot find this node; run "
            "tallystick-node register --endpoint URL"
        ]
    found = []
    if model is not None:
        listing = next(
            (x for x in registry.listings_of(provider) if x.model_id == model_id(model)), None
        )
        if listing is None or not listing.active:
            found.append(
                f"{provider} does not list {model}: clients cannot open channels for it; run "
                "tallystick-node list-model"
            )
    where = _endpoint_mismatch(info.endpoint, settings)
    if where:
        found.append(where)
    return found


def _endpoint_mismatch(endpoint: str, settings: Settings) -> str | None:
    # Only an endpoint that names this machine can be compared; a public name may sit behind a
    # proxy that forwards to us.
    try:
        parts = urlsplit(endpoint)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return f"the registered endpoint {endpoint!r} is not a URL: register again"
    host = parts.hostname or ""
    if not (is_loopback(host) or host == settings.host):
        return None
    if port != settings.port:
        return (
            f"the registered endpoint {endpoint} is not this node (port {settings.port}): "
            "clients will not reach it; run tallystick-node register --endpoint with this URL"
        )
    return None


def check_endpoint_url(endpoint: str) -> str:
    """The endpoint without a trailing slash; ``ConfigError`` unless clients can use it."""
    if not endpoint.strip():
        raise ConfigError("the endpoint must not be empty: give the node's public base URL")
    try:
        parts = urlsplit(endpoint.strip())
        parts.port  # noqa: B018 (raises on a malformed port)
    except ValueError as exc:
        raise ConfigError(f"the endpoint {endpoint!r} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"the endpoint {endpoint!r} is not a URL: give a base URL such as "
            "https://node.example.com or http://127.0.0.1:8000"
        )
    if parts.query or parts.fragment:
        raise ConfigError(f"the endpoint {endpoint!r} must not have a query or a fragment")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ConfigError(
            f"the endpoint {endpoint!r} must be an https:// URL (plain http:// only for a node "
            "on this machine, e.g. http://127.0.0.1:8000); see docs/https.md"
        )
    return endpoint.strip().rstrip("/")


def probe_health(endpoint: str, provider: str, timeout: float = 3.0) -> str | None:
    """A warning when ``endpoint``'s ``/health`` does not answer as this provider's node."""
    import httpx

    try:
        resp = httpx.get(endpoint + "/health", timeout=timeout)
        body = resp.json() if resp.status_code == 200 else None
    except (httpx.HTTPError, ValueError) as exc:
        return (
            f"{endpoint}/health does not answer ({type(exc).__name__}): registering anyway; "
            "clients reach this node once `tallystick-node serve` runs there"
        )
    if not isinstance(body, dict):
        return f"{endpoint}/health answered {resp.status_code}, not a tallystick node's health"
    other = str(body.get("provider", ""))
    if other.lower() != provider.lower():
        return f"the node at {endpoint} serves as provider {other or '?'}, not as {provider}"
    return None
