"""Issue 18's five captures, against a real node process (``tallystick-node serve``) on a real
anvil chain: whatever the victim's SDK put on the wire (its ``Authorization`` header, the body
it signed, its receipts) buys, reads and closes nothing in anyone else's hands.

The victim is the real SDK with a wire tap under it (``WireTap`` records each request exactly
as it is sent); the attacker is plain httpx with no key of the channel.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.kit.chain import MODEL
from tests.kit.node import MESSAGES

pytestmark = pytest.mark.chain

DEPOSIT = 10**15
CHAT = "/v1/chat/completions"


@dataclass(frozen=True)
class Sent:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    answer: bytes


class WireTap(httpx.BaseTransport):
    """The victim's HTTP transport: sends, and keeps a copy of every request and answer."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport(retries=1)
        self.sent: list[Sent] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()
        response = self.inner.handle_request(request)
        answer = response.read()
        self.sent.append(
            Sent(request.method, request.url.path, dict(request.headers), request.content, answer)
        )
        return httpx.Response(
            response.status_code,
            headers=[(k, v) for k, v in response.headers.multi_items() if k != "content-encoding"],
            content=answer,
            extensions=response.extensions,
        )

    def last(self, method: str, path: str) -> Sent:
        return [s for s in self.sent if s.method == method and s.path.endswith(path)][-1]

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def victim(market: Any, start_node: Any, make_client: Any) -> Any:
    node = start_node()
    tap = WireTap()
    client = make_client(market.accounts.client, "victim", transport=tap)
    info = client.channels.open(MODEL, DEPOSIT)
    _chat(client)  # seq 1, countersigned and posted: nothing unpaid, nothing in flight
    return node, tap, client, info


def _chat(client: Any, **extra: Any) -> Any:
    return client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16, **extra)


def _steal(url: str, method: str, path: str, auth: str, body: Any = None) -> httpx.Response:
    """The attacker: plain httpx, a captured Authorization value, a body of its choosing."""
    content = (
        body if isinstance(body, bytes) else (b"" if body is None else json.dumps(body).encode())
    )
    headers = {"Authorization": auth, "content-type": "application/json"}
    return httpx.request(method, url + path, content=content, headers=headers, timeout=30)


def _refused(response: httpx.Response, status: int, *codes: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] in codes, response.text


def _own_request(max_tokens: int = 64) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "free?"}],
        "max_tokens": max_tokens,
    }


def test_a_captured_request_buys_no_completion(victim: Any, market: Any) -> None:
    node, tap, client, info = victim
    captured = tap.last("POST", CHAT)
    auth = captured.headers["authorization"]
    # Its own request (another body) with the captured value: refused, before any seq.
    _refused(_steal(node.url, "POST", CHAT, auth, _own_request()), 401, "request_mismatch")
    # The captured request itself, replayed byte for byte: taken once already.
    replay = _steal(node.url, "POST", CHAT, auth, captured.body)
    _refused(replay, 401, "replayed_request")
    # The same value on the other completion route, and without it: nothing.
    _refused(
        _steal(node.url, "POST", "/v1/completions", auth, captured.body), 401, "request_mismatch"
    )
    _refused(_steal(node.url, "POST", CHAT, "", _own_request()), 401, "missing_api_key")
    view = client.node(node.url).channel(info.channel_id, client.biller.authorizer(info))
    assert view["lastSeq"] == 1 and view["unpaid"] == 0  # the node served the victim only


def test_nothing_an_outsider_sends_leaves_the_channel_stuck(victim: Any, market: Any) -> None:
    node, tap, client, info = victim
    captured = tap.last("POST", CHAT)
    auth = captured.headers["authorization"]
    for body in (_own_request(), captured.body, _own_request(1)):
        assert _steal(node.url, "POST", CHAT, auth, body).status_code == 401
    # The victim goes on as if nothing happened: the next seqs are its own.
    assert _chat(client).tally.record.record.seq == 2
    assert _chat(client, stream=False).tally.record.record.seq == 3
    closed = client.channels.close(info.channel_id)
    tally = client.store.tally(info.channel_id)
    assert closed.paid == market.escrow.get_channel(info.channel_id).paid
    assert closed.refund == DEPOSIT - closed.paid and tally.seq == 3


def test_another_partys_answers_are_never_readable(victim: Any, market: Any) -> None:
    node, tap, client, info = victim
    chat_auth = tap.last("POST", CHAT).headers["authorization"]
    records = f"/v1/tally/channels/{info.hex_id}/records/1"
    view = f"/v1/tally/channels/{info.hex_id}"
    # The completion's signature is bound to its own route and body.
    _refused(_steal(node.url, "GET", records, chat_auth), 401, "request_mismatch")
    _refused(_steal(node.url, "GET", view, chat_auth), 401, "request_mismatch")
    # A read the victim made itself, replayed: one use only.
    client.node(node.url).record(info.channel_id, 1, client.biller.authorizer(info))
    read = tap.last("GET", records)
    assert json.loads(read.answer)["completion_token_ids"]  # what the victim read
    _refused(
        _steal(node.url, "GET", records, read.headers["authorization"]), 401, "replayed_request"
    )
    # Another key signing for the victim's channel: not the client, not its session key.
    from tallystick.protocol import RequestAuth, sign_request_auth

    thief = market.accounts.client2
    auth = RequestAuth.for_request(info.channel_id, 2, b"\0" * 32, "GET", records, b"", 60)
    forged = sign_request_auth(thief, info.domain, auth).header()
    _refused(_steal(node.url, "GET", records, forged), 401, "invalid_signer")


def test_a_retired_signature_stays_retired_across_a_restart(
    victim: Any, market: Any, start_node: Any
) -> None:
    node, tap, client, info = victim
    first = tap.last("POST", CHAT)
    client.channels.authorize_session_key(info.channel_id)  # the SDK moves to a new signer
    assert _chat(client).tally.record.record.seq == 2
    replay = _steal(node.url, "POST", CHAT, first.headers["authorization"], first.body)
    _refused(replay, 401, "replayed_request")
    node.stop()  # the node forgets which signatures it took; the ledger keeps the seqs
    node.start()
    replay = _steal(node.url, "POST", CHAT, first.headers["authorization"], first.body)
    _refused(replay, 409, "stale_request")
    assert _chat(client).tally.record.record.seq == 3


def test_a_captured_receipt_closes_nothing(victim: Any, market: Any) -> None:
    node, tap, client, info = victim
    auth = tap.last("POST", CHAT).headers["authorization"]
    receipt = json.loads(tap.last("POST", "/v1/tally/receipts").body)  # travels on the wire
    close = f"/v1/tally/channels/{info.hex_id}/close"
    _refused(_steal(node.url, "POST", close, auth, receipt), 401, "request_mismatch")
    _refused(_steal(node.url, "POST", close, "", receipt), 401, "missing_api_key")
    # The channel is not closing: the victim is served, then closes it itself.
    assert _chat(client).tally.record.record.seq == 2
    # The victim asks the node to countersign its final receipt; both signatures are now on
    # the wire. A stranger sends closeCooperative with them first: only the parties may.
    final = client.store.tally(info.channel_id).receipt
    client.node(node.url).close(final, client.biller.authorizer(info))
    answer = json.loads(tap.last("POST", close).answer)
    provider_sig = bytes.fromhex(answer["providerSignature"][2:])
    from tallystick.protocol import ContractError, SignedReceipt

    stranger = market.accounts.client2
    with pytest.raises(ContractError) as refused:
        market.escrow.close_cooperative(
            stranger, SignedReceipt.from_json(answer["receipt"]), provider_sig
        )
    assert refused.value.name == "EscrowNotParty"
    assert refused.value.args[0] == stranger.address
    assert market.escrow.get_channel(info.channel_id).status.name == "OPEN"
    closed = client.channels.close(info.channel_id)
    assert closed.refund == DEPOSIT - closed.paid
    assert market.escrow.get_channel(info.channel_id).status.name == "CLOSED"
