"""The node side of the kit: a real node, in a thread or as a process, and requests signed by hand.

- ``serve_node(engine, prices, ...)``: register a provider, list the engine's model and serve
  ``create_app`` with uvicorn in a thread (a context manager yielding the endpoint); the
  ``node_server(engine, prices, token)`` fixture does it for ``accounts.provider``.
- ``NodeProcess``: ``tallystick-node serve`` as a subprocess (``_fake_node.py``: the real CLI
  with FakeEngine; ``_cheating_node.py``: the same node padding its bills), which a test can
  SIGKILL and restart on the same ledger; the ``start_node`` fixture starts them on ``market``
  and stops them before the chain state is reverted.
- ``chain_args``: the chain options every ``tallystick-node`` command takes.
- ``RawChannel``, ``signed_post``, ``signed_get``: requests signed by hand (§4.3), for tests
  that send what the SDK would not; ``check_bill`` and ``receipt_for``: a served bill checked
  and countersigned by hand.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from tallystick.protocol import Prices

from tests.kit.chain import MODEL, PRICES, Market, key_hex, open_eth_channel, register_and_list
from tests.kit.net import ThreadServer, free_port, stop_process, wait_http

HERE = Path(__file__).resolve().parent
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def chain_args(rpc: str, deployment: Any, account: Any, db: Path) -> list[str]:
    """The chain options every ``tallystick-node`` command takes."""
    return [
        "--rpc",
        rpc,
        "--escrow",
        deployment.escrow.address,
        "--registry",
        deployment.registry.address,
        "--key",
        key_hex(account),
        "--db",
        str(db),
    ]


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Poll ``/health`` until the node answers; fail at once if the process exits."""
    wait_http(url + "/health", proc, timeout=timeout, what="the node")


# --- a node in a thread ---


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
    register_and_list(
        deployment,
        provider,
        endpoint,
        engine.model_name,
        prices,
        token=token,
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
    with ThreadServer(app, port):
        yield endpoint


def fake_node_app(market: Market, db: Path) -> Any:
    """The real node app with FakeEngine on ``market``'s chain as its provider (no settlement
    worker), for a ``ThreadServer`` on ``market.port`` (e.g. behind ``Tampering``)."""
    from tallystick.node import Settings, create_app
    from tallystick.node.engines import FakeEngine

    settings = Settings(
        rpc=market.anvil.url,
        escrow=market.escrow.address,
        registry=market.registry.address,
        db=db,
        port=market.port,
        channel_cache_ttl=0,
    )
    provider = market.accounts.provider
    return create_app(settings, engine=FakeEngine(), account=provider, run_worker=False)


Tamper = Callable[[dict[str, Any]], dict[str, Any]]


class Tampering:
    """ASGI middleware: rewrites the JSON body of plain completions after the node signed it."""

    def __init__(self, app: Any, tamper: Tamper) -> None:
        self.app, self.tamper = app, tamper

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].endswith("/completions"):
            await self.app(scope, receive, send)
            return
        held: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def capture(message: Any) -> None:
            if message["type"] == "http.response.start":
                held.update(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            body = b"".join(chunks)
            if held["status"] == 200:
                body = json.dumps(self.tamper(json.loads(body))).encode()
            headers = [(k, v) for k, v in held["headers"] if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**held, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, capture)


@pytest.fixture
def node_server(deployment: Any, accounts: Any, anvil: Any, tmp_path: Path) -> Iterator[Any]:
    """``node_server(engine=None, prices=PRICES, token=None)``: ``accounts.provider``
    registered and listing ``engine``'s model (FakeEngine's ``fake-model`` by default) at
    ``prices``, served in this process (``serve_node``) until teardown; returns the endpoint."""
    from tallystick.node.engines import FakeEngine

    with contextlib.ExitStack() as stack:

        def start(engine: Any = None, prices: Prices = PRICES, token: str | None = None) -> str:
            node = serve_node(
                engine or FakeEngine(model_name=MODEL),
                prices,
                deployment=deployment,
                provider=accounts.provider,
                rpc=anvil.url,
                db=tmp_path / "node.db",
                token=token,
            )
            return str(stack.enter_context(node))

        yield start


NODE_PRICES = Prices(input_per_m=10**12, output_per_m=2 * 10**12)  # 1e6 / 2e6 wei a token


@pytest.fixture
def listed_channel(deployment: Any, accounts: Any) -> tuple[Any, Any, bytes]:
    """``accounts.provider`` registered and listing FakeEngine's ``fake-model`` at
    ``NODE_PRICES``, ``accounts.client``'s open ETH channel to it (0.1 ETH): the deployment,
    the engine to serve it with, and the channel id."""
    from tallystick.node.engines import FakeEngine

    provider, client = accounts.provider, accounts.client
    engine = FakeEngine(reply="Paid per token, settled on chain.")
    register_and_list(deployment, provider, "http://127.0.0.1:0", MODEL, NODE_PRICES)
    return deployment, engine, open_eth_channel(deployment, client, provider, MODEL, NODE_PRICES)


# --- the node as a process ---


class NodeProcess:
    """``tallystick-node serve`` (FakeEngine) in a subprocess; its stderr goes to a log file."""

    def __init__(
        self,
        market: Market,
        workdir: Path,
        *,
        rpc: str | None = None,
        key_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        port: int | None = None,
        name: str = "node",
        script: str = "_fake_node.py",
        account: Any = None,
    ) -> None:
        self.market = market
        self.script = HERE / script  # _cheating_node.py: the same node, padding its bills
        self.port = port or market.port
        self.db = workdir / f"{name}.db"
        self.log_path = workdir / f"{name}.log"
        self.rpc = rpc or market.anvil.url
        self.account = account or market.accounts.provider
        self._key_args = key_args
        self._env = env or {}
        self._args = args or []
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cmd = [sys.executable, str(self.script), "serve"]
        cmd += ["--rpc", self.rpc, "--escrow", self.market.escrow.address]
        cmd += ["--registry", self.market.registry.address, "--db", str(self.db)]
        cmd += ["--model-name", MODEL, "--port", str(self.port), "--log-format", "json"]
        cmd += ["--settle-interval", "1", "--claim-gas-multiple", "0"]
        return cmd + (self._key_args or []) + self._args

    def environment(self) -> dict[str, str]:
        env = {**os.environ, "TALLYSTICK_NODE_POLL_INTERVAL": "0.2"}
        env["TALLYSTICK_NODE_CHANNEL_CACHE_TTL"] = "0.5"
        if self._key_args is None:
            # The key travels in the environment, never on the command line (ps shows that).
            env["TALLYSTICK_NODE_KEY"] = key_hex(self.account)
        env.update(self._env)
        return env

    def start(self, timeout: float = 60.0) -> NodeProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.environment()
        )
        log.close()
        wait_http(
            self.url + "/v1/models", self.process, timeout=timeout, what="the node", log=self.log
        )
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown handler, no flush, no goodbye."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def start_node(market: Market, tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """``start_node(**kw)``: a running NodeProcess on ``market``, stopped before the chain
    reverts (keywords as ``NodeProcess``)."""
    nodes: list[NodeProcess] = []

    def start(**kwargs: Any) -> NodeProcess:
        node = NodeProcess(market, tmp_path, **kwargs)
        nodes.append(node)
        return node.start()

    yield start
    for node in nodes:
        node.stop()


# --- requests signed by hand ---


class RawChannel:
    """Drives one channel by hand as the SDK would: signs each request (§4.3) for the next
    seq after the last countersigned root, and countersigns what it is served."""

    def __init__(self, account: Any, domain: Any, channel_id: bytes) -> None:
        from tallystick.protocol import ZERO_ROOT

        self.account, self.domain, self.channel_id = account, domain, channel_id
        self.seq, self.root = 0, ZERO_ROOT

    def headers(self, method: str, path: str, body: bytes = b"") -> dict[str, str]:
        from tallystick.protocol import RequestAuth, sign_request_auth

        auth = RequestAuth.for_request(
            self.channel_id, self.seq + 1, self.root, method, path, body, 60
        )
        return {"Authorization": sign_request_auth(self.account, self.domain, auth).header()}

    def post(
        self, http: httpx.Client, path: str, body: Any, receipt: dict[str, Any] | None = None
    ) -> httpx.Response:
        """POST ``body`` (JSON) signed; ``receipt`` is piggybacked and signed after."""
        import json

        raw = json.dumps(body).encode()
        if receipt is not None:
            self.root = bytes.fromhex(receipt["usageRoot"][2:])
        headers = {"content-type": "application/json", **self.headers("POST", path, raw)}
        if receipt is not None:
            headers["X-Tally-Receipt"] = json.dumps(receipt)
        return http.post(path, content=raw, headers=headers)

    def get(self, http: httpx.Client, path: str) -> httpx.Response:
        return http.get(path, headers=self.headers("GET", path))

    def served(self, body: dict[str, Any]) -> dict[str, Any]:
        """Note a response's seq (the next request follows it, countersigned or not)."""
        self.seq = int(body["tallystick"]["record"]["seq"])
        return body

    def countersign(self, body: dict[str, Any], *, delivered: bool = True) -> dict[str, Any]:
        """The receipt of a response; ``delivered``: the next request signs after it."""
        from tallystick.protocol import Receipt, UsageRecord, sign_receipt

        record = UsageRecord.from_json(body["tallystick"]["record"])
        root = record.usage_root()
        receipt = Receipt(self.channel_id, record.input_tokens, record.output_tokens, root)
        self.seq = record.seq
        if delivered:
            self.root = root
        return sign_receipt(self.account, self.domain, receipt).to_json()


def signed_post(
    url: str,
    client: Any,
    info: Any,
    path: str,
    body: Any,
    *,
    seq: int | None = None,
    receipt: Any = None,
) -> httpx.Response:
    """POST ``body`` to a node signed by ``client``'s key for ``info`` (§4.3), by hand.

    ``seq`` defaults to the client's next one; a piggybacked ``receipt`` (a SignedReceipt)
    is sent along and the request is signed after its root, as the SDK does.
    """
    import json

    from tallystick.protocol import RequestAuth, sign_request_auth

    tally = client.store.tally(info.channel_id)
    raw = json.dumps(body).encode()
    root = receipt.receipt.usage_root if receipt is not None else tally.usage_root
    auth = RequestAuth.for_request(
        info.channel_id, tally.seq + 1 if seq is None else seq, root, "POST", path, raw, 60
    )
    signed = sign_request_auth(client.biller.signer(info), info.domain, auth)
    headers = {"content-type": "application/json", "Authorization": signed.header()}
    if receipt is not None:
        headers["X-Tally-Receipt"] = json.dumps(receipt.to_json())
    return httpx.post(f"{url}{path}", content=raw, headers=headers, timeout=30)


def signed_get(url: str, client: Any, info: Any, path: str) -> httpx.Response:
    """GET ``path`` signed by ``client`` for ``info`` (a read: channel view, record)."""
    header = client.biller.authorization(info, "GET", path, b"")
    return httpx.get(f"{url}{path}", headers={"Authorization": header}, timeout=30)


def check_bill(
    counter: Any,
    domain: Any,
    provider: str,
    tally: dict[str, Any],
    messages: list[dict[str, str]],
    text: str,
    *,
    exact: bool = False,
) -> Any:
    """Check a served ``tallystick`` object by hand, as the SDK does: signed by ``provider``,
    the prompt counted and hashed from ``messages``, the completion ids hashed and decoding to
    ``text`` (exactly, or starting with it: a stop string is cut from the text). Returns the
    SignedUsageRecord."""
    from tallystick.protocol import SignedUsageRecord, hash_token_ids, recover_usage_record_signer

    signed = SignedUsageRecord.from_json(tally)
    record = signed.record
    assert recover_usage_record_signer(domain, signed) == provider
    prompt_ids = counter.chat_prompt_ids(messages)
    assert (record.prompt_tokens, record.prompt_hash) == (
        len(prompt_ids),
        hash_token_ids(prompt_ids),
    )
    ids = tally["completion_token_ids"]
    assert record.completion_tokens == len(ids) >= 1
    assert record.completion_hash == hash_token_ids(ids)
    decoded = counter.decode(ids)
    assert decoded == text if exact else decoded.startswith(text)
    return signed


def receipt_for(account: Any, domain: Any, signed: Any) -> dict[str, Any]:
    """The receipt ``account`` countersigns for a SignedUsageRecord (its JSON)."""
    from tallystick.protocol import Receipt, sign_receipt

    r = signed.record
    receipt = Receipt(r.channel_id, r.input_tokens, r.output_tokens, r.usage_root())
    return sign_receipt(account, domain, receipt).to_json()


def channel_view(client: Any, info: Any, url: str) -> dict[str, Any]:
    """The node's view of ``info``'s channel (``GET /v1/tally/channels/{id}``, signed)."""
    resp = signed_get(url, client, info, f"/v1/tally/channels/{info.hex_id}")
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body
