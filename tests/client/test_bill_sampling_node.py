"""Bill-time sampling checks (docs/protocol.md §10.2) against a real node: a real
``tallystick-node serve`` with the SmolLM2 weights on anvil, listed with its modelHash, reached
through an HTTP proxy run by the provider itself, which rewrites a field of each signed record
and signs it again with the provider's key (what a node that samples its own way and says so
would send). The SDK pays the honest answers and refuses every rewritten one.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from tallystick.client import BillingDispute, Chain, Tallystick, Wallet
from tallystick.devnet import (
    CHAIN_ID,
    Processes,
    deploy_market,
    free_port,
    funded_account,
    gguf_context_length,
    list_model,
    register_provider,
    served_tokenizer_hash,
    start_anvil,
    start_node,
)
from tallystick.protocol import (
    Domain,
    Prices,
    SignedUsageRecord,
    UsageRecord,
    model_hash,
    sign_usage_record,
)

pytestmark = [pytest.mark.chain, pytest.mark.model]

MODEL = "SmolLM2-135M-Instruct"
MESSAGES = [{"role": "user", "content": "Name a colour."}]
NODE_ARGS = ["--model-name", MODEL, "--credit-requests", "1", "--settle-interval", "86400"]
Rewrite = Callable[[UsageRecord], UsageRecord]


class ResigningProxy:
    """Relays to the node; ``rewrite`` (when set) edits each record, which is signed again."""

    def __init__(self, node: str, provider: Any, domain: Domain) -> None:
        self.node, self.provider, self.domain = node, provider, domain
        self.rewrite: Rewrite | None = None
        self.rewritten = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                proxy._relay(self)

            def do_POST(self) -> None:
                proxy._relay(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _relay(self, handler: Any) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        skip = {"host", "content-length", "connection", "accept-encoding"}
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in skip}
        got = httpx.request(
            handler.command, self.node + handler.path, content=body, headers=headers, timeout=300
        )
        content = got.content
        if handler.path.endswith("completions") and got.status_code == 200:
            content = self._tamper(content, "text/event-stream" in got.headers["content-type"])
        handler.send_response(got.status_code)
        for k, v in got.headers.items():
            if k.lower() not in {"content-length", "transfer-encoding", "connection"}:
                handler.send_header(k, v)
        handler.send_header("Content-Length", str(len(content)))
        handler.end_headers()
        handler.wfile.write(content)

    def _tamper(self, content: bytes, sse: bool) -> bytes:
        if self.rewrite is None:
            return content
        if not sse:
            return json.dumps(self._resign(json.loads(content))).encode()
        out = []
        for line in content.split(b"\n"):
            if line.startswith(b"data: {") and b'"tallystick"' in line:
                line = b"data: " + json.dumps(self._resign(json.loads(line[6:]))).encode()
            out.append(line)
        return b"\n".join(out)

    def _resign(self, payload: dict[str, Any]) -> dict[str, Any]:
        assert self.rewrite is not None
        tally = payload["tallystick"]
        signed = SignedUsageRecord.from_json(tally)
        again = sign_usage_record(self.provider, self.domain, self.rewrite(signed.record))
        payload["tallystick"] = {**tally, **again.to_json()}
        self.rewritten += 1
        return payload


@dataclass
class Market:
    client: Tallystick
    provider: str
    proxy: ResigningProxy
    listed: bytes

    def channel(self) -> Any:
        """A new channel: a refused bill ends its channel (the client leaves it), so one each."""
        return self.client.channels.open(MODEL, 10**16, self.provider)


@pytest.fixture(scope="module")
def market(
    model_dir: Path, model_file: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Market]:
    work = tmp_path_factory.mktemp("bill-sampling")
    weights = model_dir / model_file
    with Processes() as procs:
        chain = start_anvil(procs)
        m = deploy_market(chain.url)
        provider = funded_account(m.w3)
        node = start_node(
            procs,
            rpc=chain.url,
            escrow=m.escrow.address,
            registry=m.registry.address,
            db=work / "node.db",
            key=provider.key.hex(),
            args=[*NODE_ARGS, "--model", str(weights)],
            log=work / "node.log",
        )
        proxy = ResigningProxy(node.url, provider, Domain(CHAIN_ID, m.escrow.address))
        register_provider(m.deployment, provider, proxy.url)
        list_model(
            m.deployment,
            provider,
            MODEL,
            Prices(10**9, 4 * 10**9),
            tokenizer_hash=served_tokenizer_hash(node.url, MODEL),
            context_length=gguf_context_length(weights),
            weights=weights,
        )
        client = Tallystick(
            Wallet(funded_account(m.w3)),
            work / "client.db",
            chain=Chain(m.w3, m.registry.address, m.escrow.address),
            tokenizer_dir=work / "tokenizers",
        )
        try:
            yield Market(client, provider.address, proxy, model_hash(weights))
        finally:
            client.close()
            proxy.close()


def _ask(m: Market, channel: Any, stream: bool) -> Any:
    reply = m.client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=6,
        temperature=0.7,
        seed=1234,
        stream=stream,
        channel=channel.channel_id,
    )
    if stream:
        for _ in reply:
            pass
    return reply.tally


REWRITES: dict[str, tuple[Rewrite, str]] = {
    "its own seed": (lambda r: replace(r, seed=r.seed + 1), "seed"),
    "a hotter temperature": (lambda r: replace(r, temperature=1_000_000), "temperature"),
    "other weights": (lambda r: replace(r, model_hash=b"\xcd" * 32), "modelHash"),
}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_the_real_nodes_bill_states_what_was_asked_and_is_paid(
    market: Market, stream: bool
) -> None:
    market.proxy.rewrite = None
    bill = _ask(market, market.channel(), stream)
    r = bill.record.record
    assert (r.seed, r.temperature, r.top_p, r.model_hash) == (1234, 700_000, 10**6, market.listed)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("cheat", list(REWRITES))
def test_a_resigned_record_unlike_the_request_is_refused(
    market: Market, cheat: str, stream: bool
) -> None:
    rewrite, field = REWRITES[cheat]
    market.proxy.rewrite = rewrite
    channel = market.channel()
    done = market.proxy.rewritten
    try:
        with pytest.raises(BillingDispute) as caught:
            _ask(market, channel, stream)
    finally:
        market.proxy.rewrite = None
    assert market.proxy.rewritten == done + 1  # the node's record was rewritten and re-signed
    assert [m.field for m in caught.value.mismatches] == [field]
    tally = market.client.store.tally(channel.channel_id)
    assert (tally.seq, tally.receipt) == (0, None)  # nothing countersigned
