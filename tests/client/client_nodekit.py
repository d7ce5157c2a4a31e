"""A real node (``create_app`` + an engine) served by uvicorn on a free port, listed on anvil."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
from tallystick.protocol import Prices


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve_node(
    engine: Any,
    prices: Prices,
    *,
    deployment: Any,
    provider: Any,
    rpc: str,
    db: Path,
    token: str | None = None,
) -> Iterator[str]:
    """Register ``provider``, list ``engine``'s model at ``prices``, serve; yield the endpoint."""
    from tallystick.node import Settings, create_app

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    deployment.registry.register(provider, endpoint)
    deployment.registry.list_model(
        provider,
        engine.model_name,
        prices,
        **({"token": token} if token else {}),
        tokenizer_hash=engine.tokenizer_bundle.hash(),
        context_length=engine.context_length,
    )
    settings = Settings(
        rpc=rpc,
        escrow=deployment.escrow.address,
        registry=deployment.registry.address,
        key=provider.key.hex(),
        db=db,
        port=port,
        channel_cache_ttl=0,
    )
    app = create_app(settings, engine=engine, account=provider, run_worker=False)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "the node did not start"
    try:
        yield endpoint
    finally:
        server.should_exit = True
        thread.join(timeout=30)
