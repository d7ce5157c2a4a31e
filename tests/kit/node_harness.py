"""The node's unit harness: ``create_app`` over an in-memory chain, driven through ASGI.

- ``make_node(engine=..., **settings)``: an async context factory yielding a ``Harness`` (the
  running app, its FakeChain, FakeEngine and ledger, a client with an open channel, a
  transport that signs requests as the SDK does); ``store="postgresql"`` for that ledger.
- ``FakeChain``: the escrow as the node sees it, in memory, claims following the contract's
  rules; ``open_channel``, ``settings``: a channel on it and the node's settings for it.
- ``SignAtTheDoor``: an ASGI wrapper signing requests as they arrive (for fuzzers).
Every path these fakes stand for has an integration test on anvil (tests/node/*_chain.py).
About 450 lines on purpose: the fake chain, the harness and the signing that drives it are one
concept, read together.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from tallystick.node import (
    ClaimOutcome,
    CloseRequest,
    KeyRetirement,
    LedgerStore,
    Settings,
)
from tallystick.node.engines import FakeEngine
from tallystick.protocol import (
    ZERO_ROOT,
    ChannelState,
    ChannelStatus,
    Domain,
    Listing,
    Prices,
    Receipt,
    RequestAuth,
    SignedReceipt,
    UsageRecord,
    cost_of,
    model_id,
    recover_receipt_signer,
    request_hash,
    sign_receipt,
    sign_request_auth,
)

ESCROW = "0x00000000000000000000000000000000000e5c40"
TOKEN = "0x0000000000000000000000000000000000000000"
MODEL = "fake-model"
SIGN_MARKER = "Tally-Test-Sign"  # Harness.auth(): signed by SigningTransport as sent
PRICES = Prices(input_per_m=1_000_000, output_per_m=2_000_000)  # 1 and 2 units per token


@dataclass
class FakeChain:
    """The escrow as the node sees it, in memory; claims follow the contract's rules."""

    domain: Domain
    provider: str
    channels: dict[bytes, ChannelState] = field(default_factory=dict)
    closes: list[CloseRequest] = field(default_factory=list)
    retirements: list[KeyRetirement] = field(default_factory=list)
    challenge: int = 3600
    now: int = 1_000_000
    gas_cost: int = 0
    fail_claims: int = 0  # the next n claim_many calls raise ChainUnavailable
    claim_calls: list[list[SignedReceipt]] = field(default_factory=list)
    reads: int = 0
    batch_reads: int = 0
    down: bool = False  # the RPC is unreachable: channel reads raise ChainUnavailable
    confirmations: int = 0
    decimals: int = 6  # every ERC-20's decimals()

    def rpc_failures(self) -> dict[tuple[str, str], int]:
        return {}

    async def channel(self, channel_id: bytes) -> ChannelState | None:
        self._rpc()
        self.reads += 1
        return self.channels.get(channel_id)

    async def read_channels(self, channel_ids: list[bytes]) -> dict[bytes, ChannelState | None]:
        self._rpc()
        self.batch_reads += 1
        return {cid: self.channels.get(cid) for cid in channel_ids}

    def _rpc(self) -> None:
        from tallystick.protocol import ChainUnavailable

        if self.down:
            raise ChainUnavailable("chain RPC failed: connection refused")

    async def listing(self, model: bytes) -> Listing | None:
        if model != model_id(MODEL):
            return None
        return Listing(
            self.provider,
            model,
            MODEL,
            PRICES.input_per_m,
            PRICES.output_per_m,
            TOKEN,
            b"\x11" * 32,
            2048,
            True,
        )

    async def claim_cost_estimate(self, receipts: list[SignedReceipt]) -> int:
        return self.gas_cost

    async def claim_many(self, receipts: list[SignedReceipt]) -> ClaimOutcome:
        from tallystick.protocol import ChainUnavailable

        if self.fail_claims:
            self.fail_claims -= 1
            raise ChainUnavailable("rpc down")
        self.claim_calls.append(receipts)
        claimed, skipped = {}, {}
        for signed in receipts:
            r = signed.receipt
            info = self.channels[r.channel_id]
            if not self._valid_signer(info, recover_receipt_signer(self.domain, signed)):
                skipped[r.channel_id] = "EscrowInvalidSigner"
                continue
            due = min(cost_of(r.input_tokens, r.output_tokens, info.prices), info.deposit)
            claimed[r.channel_id] = due - info.paid
            self.channels[r.channel_id] = replace(
                info, paid=due, claimed_input=r.input_tokens, claimed_output=r.output_tokens
            )
        return ClaimOutcome("0x" + "ab" * 32, 50_000, claimed, skipped)

    def _valid_signer(self, info: ChannelState, signer: str) -> bool:
        # The escrow's rule (§7.3): client, current key, or a retired key within its grace.
        return info.may_sign(signer) or any(
            e.channel_id == info.channel_id and e.key == signer and self.now < e.valid_until
            for e in self.retirements
        )

    def authorize_session_key(self, channel_id: bytes, key: str | None) -> None:
        """``authorizeSessionKey``: the replaced key is retired for one challenge period."""
        info = self.channels[channel_id]
        if info.session_key is not None and info.session_key != key:
            until = self.now + self.challenge
            block = len(self.retirements) + 1
            self.retirements.append(KeyRetirement(channel_id, info.session_key, until, block))
        self.channels[channel_id] = replace(info, session_key=key)

    async def key_retirements(self, from_block: int) -> tuple[list[KeyRetirement], int]:
        events = [e for e in self.retirements if e.block >= from_block]
        return events, max([from_block, *[e.block + 1 for e in self.retirements]])

    async def close_requests(self, from_block: int) -> tuple[list[CloseRequest], int]:
        events = [e for e in self.closes if e.block >= from_block]
        return events, max([from_block, *[e.block + 1 for e in self.closes]])

    async def tx_confirmations(self, tx_hash: str) -> int | None:
        return 1  # every claim this chain answered is in its head block

    async def timestamp(self) -> int:
        return self.now

    async def token_decimals(self, token: str) -> int:
        return self.decimals

    def request_close(self, channel_id: bytes, period: int = 3600) -> None:
        info = self.channels[channel_id]
        closes_at = self.now + period
        self.channels[channel_id] = replace(info, status=ChannelStatus.CLOSING, closes_at=closes_at)
        self.closes.append(CloseRequest(channel_id, closes_at, len(self.closes) + 1))


@dataclass
class Harness:
    """A running app, its parts, and a client account with an open channel."""

    app: Any
    http: httpx.AsyncClient
    chain: FakeChain
    engine: FakeEngine
    ledger: LedgerStore
    provider: LocalAccount
    client: LocalAccount
    channel_id: bytes
    signers: dict[str, Any] = field(default_factory=dict)

    @property
    def node(self) -> Any:
        return self.app.state.node

    def auth(
        self,
        account: LocalAccount | None = None,
        channel_id: bytes | None = None,
        ttl: int = 60,
        *,
        seq: int | None = None,
        root: bytes | None = None,
    ) -> dict[str, str]:
        """A marker the harness's transport replaces with a real signature of the request as
        sent (``SigningTransport``): seq and root default to the node's next ones."""
        key = str(len(self.signers))
        self.signers[key] = (account or self.client, channel_id or self.channel_id, ttl, seq, root)
        return {"Authorization": f"{SIGN_MARKER} {key}"}

    def sign(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        account: LocalAccount | None = None,
        channel_id: bytes | None = None,
        ttl: int = 60,
        *,
        seq: int | None = None,
        root: bytes | None = None,
    ) -> dict[str, str]:
        """A real ``Authorization: Tally …`` header for one request."""
        cid = channel_id or self.channel_id
        next_seq, last_root = next_request(self.ledger, cid)
        auth = RequestAuth(
            cid,
            next_seq if seq is None else seq,
            last_root if root is None else root,
            request_hash(method, path, body),
            int(time.time()) + ttl,
            secrets.randbits(64),
        )
        signed = sign_request_auth(account or self.client, self.chain.domain, auth)
        return {"Authorization": signed.header()}

    def sign_marked(self, request: httpx.Request) -> None:
        """Replace the ``auth()`` marker of ``request`` with the real signature."""
        value = request.headers.get("authorization", "")
        if not value.startswith(SIGN_MARKER):
            return
        account, cid, ttl, seq, root = self.signers[value.split()[-1]]
        piggybacked = request.headers.get("x-tally-receipt")
        if root is None and piggybacked:  # the client signs after the receipt it sends along
            # A malformed receipt is refused by the node before the signature matters.
            with contextlib.suppress(ValueError, KeyError, TypeError):
                root = bytes.fromhex(json.loads(piggybacked)["usageRoot"][2:])
        # A streamed body (a test of the body limit) is refused before its signature matters.
        body = request.content if isinstance(request.stream, httpx.ByteStream) else b""
        signed = self.sign(
            request.method, request.url.path, body, account, cid, ttl, seq=seq, root=root
        )
        request.headers["Authorization"] = signed["Authorization"]

    def chat_scope(self, body: bytes) -> dict[str, Any]:
        """The ASGI scope of ``POST /v1/chat/completions`` with ``body``, signed (§4.3), for a
        test that drives ``app`` as uvicorn would (its own receive and send)."""
        signed = self.sign("POST", "/v1/chat/completions", body)
        headers = [(b"content-type", b"application/json")]
        headers += [(k.lower().encode(), v.encode()) for k, v in signed.items()]
        return {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "path": "/v1/chat/completions",
            "raw_path": b"",
            "query_string": b"",
            "headers": headers,
            "scheme": "http",
            "server": ("node", 80),
            "client": ("test", 1),
            "root_path": "",
        }

    def countersign(
        self, body: dict[str, Any], account: LocalAccount | None = None
    ) -> dict[str, Any]:
        record = UsageRecord.from_json(body["tallystick"]["record"])
        receipt = Receipt(
            record.channel_id, record.input_tokens, record.output_tokens, record.usage_root()
        )
        return sign_receipt(account or self.client, self.chain.domain, receipt).to_json()

    async def chat(
        self, content: str = "Hi", *, receipt: dict[str, Any] | None = None, **extra: Any
    ) -> httpx.Response:
        headers = self.auth()
        if receipt is not None:
            headers["X-Tally-Receipt"] = json.dumps(receipt)
        body = {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}
        return await self.http.post("/v1/chat/completions", json=body, headers=headers)

    async def paid_chat(self, content: str = "Hi", **extra: Any) -> dict[str, Any]:
        """A chat request whose response is countersigned at once (POST /v1/tally/receipts)."""
        resp = await self.chat(content, **extra)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        posted = await self.http.post("/v1/tally/receipts", json=self.countersign(body))
        assert posted.status_code == 200, posted.text
        return body


def next_request(ledger: Any, channel_id: bytes) -> tuple[int, bytes]:
    """The seq and root the node expects of the channel's next request (§4.3)."""
    book = ledger.book(channel_id)
    receipt = ledger.last_receipt(channel_id)
    return book.seq + book.in_flight + 1, (
        receipt.signed.receipt.usage_root if receipt else ZERO_ROOT
    )


class SigningTransport(httpx.AsyncBaseTransport):
    """Signs requests carrying the ``Harness.auth()`` marker, as the SDK's transport does."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.harness: Harness | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.harness is not None:
            self.harness.sign_marked(request)
        return await self.inner.handle_async_request(request)


def open_channel(
    chain: FakeChain,
    client: LocalAccount,
    *,
    deposit: int = 100_000,
    nonce: int = 0,
    provider: str | None = None,
    model: str = MODEL,
) -> bytes:
    from tallystick.protocol import channel_id

    salt = nonce.to_bytes(32, "big")  # any distinct salt; tests number their channels
    cid = channel_id(ESCROW, client.address, provider or chain.provider, model_id(model), salt)
    chain.channels[cid] = ChannelState(
        channel_id=cid,
        client=client.address,
        provider=provider or chain.provider,
        token=TOKEN,
        status=ChannelStatus.OPEN,
        model_id=model_id(model),
        prices=PRICES,
        deposit=deposit,
        paid=0,
        claimed_input=0,
        claimed_output=0,
        closes_at=0,
    )
    return cid


def settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "rpc": "http://unused",
        "escrow": ESCROW,
        "registry": ESCROW,
        "settle_interval": 3600.0,
        "channel_cache_ttl": 60.0,
    }
    return Settings(**{**base, **overrides})


class SignAtTheDoor:
    """ASGI wrapper: a request carrying ``SIGN_MARKER`` is signed as it arrives, by
    ``account`` for ``channel_id`` at the node's next seq, over the exact body received (for
    fuzzers, which build the body themselves). Anything else passes untouched."""

    def __init__(self, app: Any, account: LocalAccount, domain: Domain, channel_id: bytes) -> None:
        self.app, self.account, self.domain, self.channel_id = app, account, domain, channel_id

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        headers = dict(scope.get("headers") or []) if scope["type"] == "http" else {}
        if not headers.get(b"authorization", b"").startswith(SIGN_MARKER.encode()):
            await self.app(scope, receive, send)
            return
        messages, body = [], b""
        while True:
            message = await receive()
            messages.append(message)
            body += message.get("body", b"")
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        value = self._sign(scope["method"], scope["path"], body, headers)
        scope = {
            **scope,
            "headers": [(k, v) for k, v in scope["headers"] if k != b"authorization"]
            + [(b"authorization", value.encode())],
        }

        async def replay() -> Any:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    def _sign(self, method: str, path: str, body: bytes, headers: dict[bytes, bytes]) -> str:
        seq, last_root = next_request(self.app.state.node.ledger, self.channel_id)
        root = last_root
        with contextlib.suppress(ValueError, KeyError, TypeError, UnicodeDecodeError):
            root = bytes.fromhex(json.loads(headers[b"x-tally-receipt"])["usageRoot"][2:])
        auth = RequestAuth(
            self.channel_id,
            seq,
            root if len(root) == 32 else last_root,
            request_hash(method, path, body),
            int(time.time()) + 60,
            secrets.randbits(64),
        )
        return sign_request_auth(self.account, self.domain, auth).header()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def make_node(make_ledger: Callable[[str], LedgerStore]) -> Callable[..., Any]:
    """An async context factory: ``async with make_node(engine=..., **settings) as h``.

    ``store="postgresql"`` runs the node on a PostgreSQL ledger (default: SQLite).
    """
    from contextlib import asynccontextmanager

    from tallystick.node import create_app

    @asynccontextmanager
    async def factory(
        engine: FakeEngine | None = None,
        run_worker: bool = False,
        store: str = "sqlite",
        **overrides: Any,
    ) -> AsyncIterator[Harness]:
        provider = Account.from_key("0x" + "11" * 32)
        client = Account.from_key("0x" + "22" * 32)
        chain = FakeChain(Domain(31337, ESCROW), provider.address)
        cid = open_channel(chain, client)
        engine = engine or FakeEngine(reply="Hello there, friend.")
        ledger = make_ledger(store)
        app = create_app(
            settings(**overrides),
            engine=engine,
            chain=chain,
            store=ledger,
            account=provider,
            run_worker=run_worker,
        )
        async with app.router.lifespan_context(app):
            transport = SigningTransport(httpx.ASGITransport(app=app))
            async with httpx.AsyncClient(transport=transport, base_url="http://node") as http:
                transport.harness = Harness(app, http, chain, engine, ledger, provider, client, cid)
                yield transport.harness
        ledger.close()

    return factory
