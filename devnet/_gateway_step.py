"""The demo's last step: the same request, sent by the plain ``openai`` SDK through the gateway.

The gateway runs in-process (uvicorn in a thread) on the demo's chain, with the demo
client's wallet and a store of its own; the request is made exactly as any OpenAI program
makes it (base_url and api_key, nothing else), then the gateway's channel is closed
cooperatively so the demo leaves nothing open.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from tallystick.client import Chain, Wallet

from ._processes import free_port

__all__ = ["gateway_step"]


def gateway_step(
    console: Console,
    *,
    wallet: Wallet,
    chain: Chain,
    token: str,
    budget: int,
    store: Path,
    model: str,
    prompt: str,
    max_tokens: int,
    temperature: float,
    seed: int,
) -> dict[str, Any]:
    """Serve a gateway, send ``prompt`` through it with ``openai``, close its channel."""
    import openai
    import uvicorn
    from tallystick.client._gateway import GatewaySettings, create_app
    from tallystick.client._gateway._service import open_gateway

    settings = GatewaySettings(budget=budget, token=token, deposit=budget, idle_close_s=3600)
    gateway = open_gateway(wallet, store, chain, settings)
    _, secret = gateway.ledger.create_key("demo")
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(gateway), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        _wait_started(server)
        base_url = f"http://127.0.0.1:{port}/v1"
        console.print(
            f"tallystick gateway --budget {budget} --token {token}   [dim](here in-process on "
            f"port {port})[/dim]\n"
            "Any OpenAI client, two lines:\n"
            f'  [bold]client = OpenAI(base_url="{base_url}", api_key="{secret[:10]}…")[/bold]\n'
            f'  [bold]client.chat.completions.create(model="{model}", messages=[...])[/bold]'
        )
        client = openai.OpenAI(base_url=base_url, api_key=secret, max_retries=0)
        console.print(f"\n[bold cyan]openai ›[/bold cyan] {prompt}")
        raw = client.chat.completions.with_raw_response.create(
            model=model,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=max_tokens,
            temperature=temperature,
            seed=seed,
        )
        reply = raw.parse()
        assert reply.usage is not None
        text = " ".join((reply.choices[0].message.content or "").split())
        console.print(f"[bold magenta]node   ›[/bold magenta] {text}", soft_wrap=True)
        usage = gateway.ledger.usage(("key", "provider", "channel"))
        cost = int(raw.headers["x-tally-cost"])
        console.print(
            f"  via provider {raw.headers['x-tally-provider']}, channel "
            f"{raw.headers['x-tally-channel'][:12]}…: {reply.usage.prompt_tokens} in + "
            f"{reply.usage.completion_tokens} out tokens = {cost} units, verified and "
            "countersigned by the gateway"
        )
        closed = [gateway.client.channels.close_auto(c.channel_id) for c in gateway.pool.channels()]
        for result in closed:
            if not isinstance(result, int):
                console.print(
                    f"  gateway channel closed cooperatively: provider paid {result.paid}, "
                    f"refunded {result.refund}"
                )
        return {"cost": cost, "text": text, "usage": usage}
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _wait_started(server: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the gateway did not start")
        time.sleep(0.02)
