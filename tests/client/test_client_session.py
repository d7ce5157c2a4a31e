"""Session keys on the real node and chain: the wallet's key stays cold while a per-channel key
signs requests and receipts; a key of one channel is worthless on another."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest
from tallystick.client import Chain, Tallystick, Wallet, WalletError
from tallystick.protocol import (
    Prices,
    Receipt,
    RequestAuth,
    cost_of,
    recover_receipt_signer,
    sign_receipt,
    sign_request_auth,
)

pytestmark = pytest.mark.chain
PRICES = Prices(input_per_m=3_000_000_000, output_per_m=9_000_000_000)
MESSAGES = [{"role": "user", "content": "hello"}]
MODEL = "fake-model"


@pytest.fixture
def endpoint(node_server: Any) -> str:
    return str(node_server(prices=PRICES))


@pytest.fixture
def chain(deployment: Any, w3: Any) -> Chain:
    return Chain(w3, deployment.registry.address, deployment.escrow.address)


def _chat(client: Tallystick, channel: bytes) -> Any:
    return client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=8, channel=channel
    ).tally


def test_session_key_signs_while_the_wallet_stays_cold(
    endpoint: str, chain: Chain, deployment: Any, accounts: Any, tmp_path: Path
) -> None:
    store = tmp_path / "c.db"
    with Tallystick(Wallet(accounts.client), store, chain=chain) as hot:
        info = hot.channels.open(MODEL, 10**15, session_key=True)
    key = deployment.escrow.get_channel(info.channel_id).session_key
    assert key not in (accounts.client.address, "0x" + "0" * 40)
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    with Tallystick(None, store, chain=chain) as cold:  # no wallet: the session key signs
        bill = _chat(cold, info.channel_id)
        _chat(cold, info.channel_id)
        receipt = cold.store.tally(info.channel_id).receipt
        assert recover_receipt_signer(info.domain, receipt) == key
        path = f"/v1/tally/channels/{info.hex_id}"
        signed = cold.biller.authorization(info, "GET", path, b"")
        view = httpx.get(f"{endpoint}{path}", headers={"Authorization": signed}).json()
        assert view["countersigned"]["seq"] == 2 and view["unpaid"] == 0
        with pytest.raises(WalletError):
            cold.channels.top_up(info.channel_id, 1)
    assert bill.record.record.seq == 1
    # The provider claims the session-key receipt on-chain; the wallet closes the channel.
    paid = deployment.escrow.claim(accounts.provider, receipt).value
    assert paid == cost_of(receipt.receipt.input_tokens, receipt.receipt.output_tokens, PRICES)
    with Tallystick(Wallet(accounts.client), store, chain=chain) as hot:
        closed = hot.channels.close(info.channel_id)
    assert (closed.paid, closed.refund) == (paid, 10**15 - paid)


def test_session_key_authorised_for_an_existing_channel(
    endpoint: str, chain: Chain, deployment: Any, accounts: Any, tmp_path: Path
) -> None:
    store = tmp_path / "c.db"
    with Tallystick(Wallet(accounts.client), store, chain=chain) as hot:
        info = hot.channels.open(MODEL, 10**15)
        _chat(hot, info.channel_id)  # signed by the wallet
        key = hot.channels.authorize_session_key(info.channel_id)
    assert deployment.escrow.get_channel(info.channel_id).session_key == key
    with Tallystick(None, store) as cold:
        assert _chat(cold, info.channel_id).record.record.seq == 2
        receipt = cold.store.tally(info.channel_id).receipt
        assert recover_receipt_signer(info.domain, receipt) == key


def test_session_key_of_one_channel_is_refused_on_another(
    endpoint: str, chain: Chain, deployment: Any, accounts: Any, tmp_path: Path
) -> None:
    with Tallystick(Wallet(accounts.client), tmp_path / "c.db", chain=chain) as client:
        a = client.channels.open(MODEL, 10**15, session_key=True)
        b = client.channels.open(MODEL, 10**15)
        _chat(client, b.channel_id)
        key_a = client.store.session_account(a.channel_id)
        served_b = client.store.tally(b.channel_id)
    assert key_a is not None
    # The node: a request on B signed by A's session key is 401.
    body = json.dumps({"model": MODEL, "messages": MESSAGES, "max_tokens": 4}).encode()
    auth = RequestAuth.for_request(
        b.channel_id, 2, served_b.usage_root, "POST", "/v1/chat/completions", body, 60
    )
    response = httpx.post(
        f"{endpoint}/v1/chat/completions",
        content=body,
        headers={"Authorization": sign_request_auth(key_a, b.domain, auth).header()},
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_signer"
    # The chain: a receipt for B signed by A's session key is skipped, with the signer named.
    forged = sign_receipt(
        key_a,
        b.domain,
        Receipt(b.channel_id, served_b.input_tokens, served_b.output_tokens, served_b.usage_root),
    )
    result = deployment.escrow.claim_many(accounts.provider, [forged])
    assert result.value == 0 and len(result.skipped) == 1
    reason = result.skipped[0].reason
    assert reason.name == "EscrowInvalidSigner"
    assert reason.args == (key_a.address, accounts.client.address)
    assert deployment.escrow.get_channel(b.channel_id).paid == 0
