"""The client side of the kit: a fake node for the SDK's unit tests, and real SDK clients.

- ``FakeNode``: an ``httpx.MockTransport`` that speaks docs/protocol.md §8. It counts with the
  tiny test tokenizer, signs real UsageRecords with a real provider key, and lets a test
  tamper with a bill (before or after signing) to play a dishonest provider. Fixtures:
  ``wallet`` (a fresh key), ``fake`` (a FakeNode for it), ``client`` (a Tallystick on a store
  holding one open channel to ``fake``). Every path it stands for is also tested against a
  real node (``tests/kit/node.py``).
- ``make_client(account, name)``: a real Tallystick on ``market``'s chain with its own store
  (closed at teardown).
- ``ClientLoad``: one SDK client's share of a load, in a thread (crash and replica tests).
- ``cli_args(rpc, deployment, account, store)``: the ``tallystick`` CLI's global options;
  ``run_cli(argv, capsys)``: run it in-process, ``(exit code, stdout on one line, stderr)``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from tallystick.client import OpenChannel, Tallystick, Wallet
from tallystick.node.engines import tiny_tokenizer_bundle
from tallystick.protocol import (
    ETH,
    RECEIPT_HEADER,
    ZERO_ROOT,
    ChannelStatus,
    ClosingReceipt,
    Domain,
    Prices,
    SignedReceipt,
    SignedRequestAuth,
    SignedUsageRecord,
    TokenCounter,
    UsageBill,
    UsageRecord,
    hash_token_ids,
    params_units,
    recover_receipt_signer,
    recover_request_auth_signer,
    request_hash,
    sign_receipt,
    sign_usage_record,
)

ENDPOINT = "http://node.test"
MODEL = "tiny-chat"
CHAIN_ID = 31337
ESCROW = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
PRICES = Prices(input_per_m=2_000_000, output_per_m=8_000_000)  # 2 and 8 base units per token


@dataclass
class Bill:
    """What the node is about to sign and send; a tamper hook may change any of it."""

    record: UsageRecord
    completion_ids: list[int]
    text: str
    finish_reason: str
    signer: LocalAccount | None = None  # None: the provider's key
    after_sign: Callable[[SignedUsageRecord], SignedUsageRecord] | None = None


@dataclass
class FakeNode:
    """State of the fake node: served totals, receipts received, tamper hooks."""

    provider: LocalAccount
    client_address: str
    channel_id: bytes
    reply: str = "hello world"
    tamper: Callable[[Bill], None] | None = None
    status_override: tuple[int, dict[str, Any]] | None = None
    seq: int = 0
    totals: tuple[int, int] = (0, 0)
    root: bytes = ZERO_ROOT
    receipts: list[SignedReceipt] = field(default_factory=list)
    piggybacked: list[SignedReceipt] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    escrow: str = ESCROW
    prices: Prices = PRICES
    model_hash: bytes = bytes(32)  # the listed weights the records state (§10.1); 0: no claim

    def __post_init__(self) -> None:
        self.bundle = tiny_tokenizer_bundle()
        self.counter = TokenCounter(self.bundle)
        self.domain = Domain(CHAIN_ID, self.escrow)

    def first_record(self, prompt: list[int], ids: list[int]) -> SignedUsageRecord:
        """The channel's first UsageRecord billing ``prompt`` and ``ids``, signed by the
        provider (for a test of the client's rules on one record, without a request)."""
        record = UsageRecord(
            channel_id=self.channel_id,
            seq=1,
            prompt_tokens=len(prompt),
            completion_tokens=len(ids),
            prompt_hash=hash_token_ids(prompt),
            completion_hash=hash_token_ids(ids),
            input_tokens=len(prompt),
            output_tokens=len(ids),
            prev_root=ZERO_ROOT,
        )
        return sign_usage_record(self.provider, self.domain, record)

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def channel_info(self) -> OpenChannel:
        return OpenChannel(
            channel_id=self.channel_id,
            chain_id=CHAIN_ID,
            escrow=self.escrow,
            client=self.client_address,
            provider=self.provider.address,
            endpoint=ENDPOINT,
            model=MODEL,
            token=ETH,
            prices=self.prices,
            deposit=10**9,
            tokenizer_hash=self.bundle.hash(),
            context_length=2048,
            status=ChannelStatus.OPEN,
            model_hash=self.model_hash,
        )

    # routing

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == f"/v1/tally/tokenizer/{MODEL}":
            return httpx.Response(200, content=self.bundle.canonical_bytes())
        if path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [self.model_entry()]})
        if path != "/v1/tally/receipts":  # a receipt is its own signature
            self._authorize(request)
        if self.status_override is not None:
            status, body = self.status_override
            return httpx.Response(status, json=body)
        if RECEIPT_HEADER in request.headers:
            piggybacked = SignedReceipt.from_header(request.headers[RECEIPT_HEADER])
            self.piggybacked.append(piggybacked)
            self._accept(piggybacked)
        if path == "/v1/tally/receipts":
            self._accept(SignedReceipt.from_json(json.loads(request.content)))
            return httpx.Response(200, json={"ok": True})
        if path.endswith("/close"):
            signed = self._accept(SignedReceipt.from_json(json.loads(request.content)))
            sig = sign_receipt(self.provider, self.domain, signed.receipt).signature
            return httpx.Response(200, json=ClosingReceipt(signed, sig, self.seq).to_json())
        if path in ("/v1/chat/completions", "/v1/completions"):
            return self._complete(request, chat=path.endswith("chat/completions"))
        return httpx.Response(404, json={"error": {"message": "not found", "code": "not_found"}})

    def model_entry(self) -> dict[str, Any]:
        """The entry of ``GET /v1/models`` as tallystick.node serves it."""
        return {
            "id": MODEL,
            "object": "model",
            "created": 0,
            "owned_by": self.provider.address,
            "context_length": 2048,
            "tokenizer_hash": "0x" + self.bundle.hash().hex(),
            "pricing": {
                "input_per_million": self.prices.input_per_m,
                "output_per_million": self.prices.output_per_m,
                "token": "0x0000000000000000000000000000000000000000",
            },
            "listed": True,
        }

    def _authorize(self, request: httpx.Request) -> None:
        signed = SignedRequestAuth.from_header(request.headers["authorization"])
        expected = request_hash(request.method, request.url.path, request.content)
        assert signed.auth.request_hash == expected, "signed for another request"
        assert recover_request_auth_signer(self.domain, signed) == self.client_address, (
            "request signed by a stranger"
        )
        if request.url.path.endswith("completions"):
            assert signed.auth.seq == self.seq + 1, (signed.auth.seq, self.seq)

    def _accept(self, signed: SignedReceipt) -> SignedReceipt:
        assert recover_receipt_signer(self.domain, signed) == self.client_address
        self.receipts.append(signed)
        return signed

    # completions

    def _complete(self, request: httpx.Request, chat: bool) -> httpx.Response:
        body = json.loads(request.content)
        self.requests.append(body)
        if chat:
            prompt = self.counter.chat_prompt_ids(body["messages"])
        else:
            prompt = self.counter.text_prompt_ids(body["prompt"])
        bill = self._bill(prompt, body)
        if self.tamper is not None:
            self.tamper(bill)
        signed = sign_usage_record(bill.signer or self.provider, self.domain, bill.record)
        if bill.after_sign is not None:
            signed = bill.after_sign(signed)
        self._advance(bill.record)
        tally = UsageBill(signed, bill.completion_ids).to_json()
        if body.get("stream"):
            return self._sse(body, bill, tally, chat)
        return httpx.Response(200, json=_completion(body, bill, tally, chat))

    def _bill(self, prompt: list[int], body: dict[str, Any]) -> Bill:
        ids = self.counter.text_prompt_ids(self.reply) + self.counter.eos_token_ids
        temperature, top_p = body.get("temperature"), body.get("top_p")
        record = UsageRecord(
            channel_id=self.channel_id,
            seq=self.seq + 1,
            prompt_tokens=len(prompt),
            completion_tokens=len(ids),
            prompt_hash=hash_token_ids(prompt),
            completion_hash=hash_token_ids(ids),
            input_tokens=self.totals[0] + len(prompt),
            output_tokens=self.totals[1] + len(ids),
            prev_root=self.root,
            # The sampling asked for and the listed weights, as an honest node states them.
            seed=body.get("seed") or 0,
            temperature=params_units(1.0 if temperature is None else temperature),
            top_p=params_units(1.0 if top_p is None else top_p),
            model_hash=self.model_hash,
        )
        return Bill(record, ids, self.reply, "stop")

    def _advance(self, record: UsageRecord) -> None:
        self.seq = record.seq
        self.totals = (record.input_tokens, record.output_tokens)
        self.root = replace(record, prev_root=record.prev_root).usage_root()

    def _sse(self, body: dict[str, Any], bill: Bill, tally: dict[str, Any], chat: bool) -> Any:
        pieces = [bill.text[i : i + 3] for i in range(0, len(bill.text), 3)]
        events = [_chunk(body, p, None, chat) for p in pieces]
        events.append(_chunk(body, "", bill.finish_reason, chat))
        final = _chunk(body, None, None, chat)
        final["choices"] = []
        final["usage"] = _usage(bill)
        final["tallystick"] = tally
        events.append(final)
        data = b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in events)
        return httpx.Response(
            200, content=data + b"data: [DONE]\n\n", headers={"content-type": "text/event-stream"}
        )


def _usage(bill: Bill) -> dict[str, int]:
    r = bill.record
    return {
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "total_tokens": r.prompt_tokens + r.completion_tokens,
    }


def _completion(body: dict[str, Any], bill: Bill, tally: dict[str, Any], chat: bool) -> Any:
    if chat:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": bill.text},
            "finish_reason": bill.finish_reason,
        }
    else:
        choice = {"index": 0, "text": bill.text, "finish_reason": bill.finish_reason}
    return {
        "id": "cmpl-1",
        "object": "chat.completion" if chat else "text_completion",
        "created": 1700000000,
        "model": body["model"],
        "choices": [choice],
        "usage": _usage(bill),
        "tallystick": tally,
    }


def _chunk(body: dict[str, Any], text: str | None, finish: str | None, chat: bool) -> Any:
    if chat:
        delta = {} if text is None else {"content": text}
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": text or "", "finish_reason": finish}
    return {
        "id": "cmpl-1",
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": 1700000000,
        "model": body["model"],
        "choices": [choice],
    }


def new_provider() -> LocalAccount:
    return Account.create()


MESSAGES = [{"role": "user", "content": "hello"}]


def fake_chat(client: Tallystick, **kw: object) -> object:
    """One chat request to the fake node (``MODEL``, ``MESSAGES``, 16 tokens at most)."""
    return client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16, **kw)


def assert_nothing_countersigned(client: Tallystick, fake: FakeNode) -> None:
    """The client countersigned, stored and posted nothing on the fake node's channel."""
    cid = fake.channel_id
    tally = client.store.tally(cid)
    assert (tally.seq, tally.input_tokens, tally.output_tokens) == (0, 0, 0)
    assert tally.receipt is None and tally.usage_root == ZERO_ROOT
    assert client.store.bill(cid) == []
    assert fake.receipts == []


# --- fixtures ---


@pytest.fixture
def wallet() -> Wallet:
    return Wallet.from_key("0x" + os.urandom(32).hex())


@pytest.fixture
def fake(wallet: Wallet) -> FakeNode:
    return FakeNode(new_provider(), wallet.address, os.urandom(32))


@pytest.fixture
def client(wallet: Wallet, fake: FakeNode, tmp_path: Path) -> Iterator[Tallystick]:
    """A client on a store holding one open channel to the fake node."""
    with Tallystick(wallet, tmp_path / "store.db", transport=fake.transport) as c:
        c.store.add_channel(fake.channel_info())
        yield c


@pytest.fixture
def make_client(market: Any, tmp_path: Path) -> Iterator[Callable[..., Tallystick]]:
    """``make_client(account, name)``: a Tallystick on ``tmp_path/name.db`` (closed at teardown)."""
    made: list[Tallystick] = []

    def make(account: Any, name: str, **kwargs: Any) -> Tallystick:
        client = Tallystick(
            Wallet(account), tmp_path / f"{name}.db", chain=market.chain(), **kwargs
        )
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


# --- the CLI ---


def cli_args(rpc: str, deployment: Any, account: Any, store: Path) -> list[str]:
    """The ``tallystick`` CLI's global options for ``account`` with its store at ``store``."""
    key = "0x" + account.key.hex().removeprefix("0x")
    return [
        "--rpc",
        rpc,
        "--registry",
        deployment.registry.address,
        "--escrow",
        deployment.escrow.address,
        "--store",
        str(store),
        "--key",
        key,
    ]


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``tallystick ARGV`` in this process: exit code, stdout with its whitespace collapsed to
    single spaces (tables wrap), stderr as written."""
    from tallystick.client.cli import main

    code = 0
    try:
        main(argv)
    except SystemExit as exc:  # main exits only on an error
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, " ".join(captured.out.split()), captured.err


# --- load ---


@dataclass
class ClientLoad:
    """One SDK client's share of a load on ``model`` (run in a thread), and what it saw: a
    request that fails with a ClientError or an HTTP error (a node down or restarting) is
    noted in ``errors`` and tried again."""

    client: Tallystick
    info: Any
    target: int
    model: str = "fake-model"
    served: int = 0
    errors: list[str] = field(default_factory=list)

    def run(self, stop: threading.Event) -> None:
        try:
            self._run(stop)
        except BaseException as exc:  # shown by the served == target assertion, not lost
            self.errors.append(f"load thread died: {type(exc).__name__}: {exc}")
            raise

    def _run(self, stop: threading.Event) -> None:
        from tallystick.client import ClientError

        messages = [{"role": "user", "content": "What is the capital of France?"}]
        while self.served < self.target and not stop.is_set():
            try:
                reply = self.client.chat.completions.create(
                    model=self.model, messages=messages, max_tokens=16
                )
            except (ClientError, httpx.HTTPError) as exc:
                # The node is down or restarting: the SDK must let us simply try again.
                self.errors.append(f"{type(exc).__name__}: {exc}")
                time.sleep(0.05)
                continue
            assert reply.tally is not None
            self.served += 1
