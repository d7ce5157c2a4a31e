"""Channels that must never get stuck (DESIGN.md guarantee 8), against a real node process on
anvil: a plain request the client gave up on, a node SIGKILLed mid-stream and restarted, two
processes on one channel, and an ERC-20 channel the settlement worker must claim by itself.

Each case ends with the channel working (the next request at once) and a cooperative close.
The real-model variants (the engine really stops) are in ``tests/e2e/test_model_stuck.py``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from tallystick.client import NodeUnavailable
from tallystick.protocol import Prices, cost_of

from tests.kit.chain import MODEL, PRICES, list_model
from tests.kit.net import wait_for
from tests.kit.node import MESSAGES

pytestmark = pytest.mark.chain

DEPOSIT = 10**15
LONG_REPLY = "Tally sticks were split in two so each side kept a half that had to match. " * 3
SLOW = {"TALLY_FAKE_TOKEN_DELAY": "0.1", "TALLY_FAKE_REPLY": LONG_REPLY}
CLI = Path(sys.executable).parent / "tallystick"


def _running(node: Any) -> int:
    return int(httpx.get(node.url + "/health", timeout=5).json()["engine"]["running"])


def _close_pays_exactly_the_bill(client: Any, channel_id: bytes, prices: Prices) -> None:
    tally = client.store.tally(channel_id)
    closed = client.channels.close(channel_id)
    assert closed.paid == cost_of(tally.input_tokens, tally.output_tokens, prices)


# --- B1: a plain request the client gave up on ------------------------------------------------


def test_a_plain_request_the_client_gave_up_on_stops_the_node_and_bills_only_the_prompt(
    market: Any, start_node: Any, make_client: Any
) -> None:
    node = start_node(env=SLOW)
    impatient = make_client(market.accounts.client, "client", timeout=1.0)
    info = impatient.channels.open(MODEL, DEPOSIT)
    asked = time.monotonic()
    with pytest.raises(NodeUnavailable, match="timed out"):
        impatient.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=200)
    # The node stops generating once it sees the disconnect, long before the 200 ids
    # (20 s at this pace) would have been generated.
    wait_for(lambda: _running(node) == 0, 3, "the node to stop generating")
    assert time.monotonic() - asked < 5
    impatient.close()

    client = make_client(market.accounts.client, "client")
    started = time.monotonic()
    reply = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
    assert time.monotonic() - started < 3  # at once: no wait loop, no 402
    assert reply.tally.record.record.seq == 2
    given_up, served = client.bill(info.channel_id)
    assert given_up.completion_tokens == 0 and given_up.prompt_tokens > 0  # the prompt only
    assert served.completion_tokens == 2
    assert client.store.disputes() == []
    _close_pays_exactly_the_bill(client, info.channel_id, PRICES)


# --- B2: the node SIGKILLed mid-stream, then restarted ----------------------------------------


def test_a_node_killed_mid_stream_gives_tallystick_errors_then_the_channel_works_at_once(
    market: Any, start_node: Any, make_client: Any
) -> None:
    node = start_node(env=SLOW)
    client = make_client(market.accounts.client, "client")
    info = client.channels.open(MODEL, DEPOSIT)
    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=200, stream=True
    )
    chunks = iter(stream)
    received = [next(chunks) for _ in range(3)]
    assert received[-1].choices[0].delta.content
    node.kill()
    with pytest.raises(NodeUnavailable) as cut:  # not httpx.RemoteProtocolError
        for _ in chunks:
            pass
    assert isinstance(cut.value.__cause__, httpx.HTTPError)
    pending = client.store.pending(info.channel_id)
    assert pending is not None and pending.received  # kept for the next request

    # While the node is down every call says so in Tallystick's terms.
    with pytest.raises(NodeUnavailable):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
    with pytest.raises(NodeUnavailable):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2, stream=True)

    node.start()  # same ledger: it never signed a record for the killed stream
    started = time.monotonic()
    reply = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
    assert time.monotonic() - started < 3  # at once (the old client waited 10 s, then failed)
    assert reply.tally.record.record.seq == 1  # the killed request was dropped as unbilled
    assert client.store.pending(info.channel_id) is None
    assert client.store.disputes() == []
    _close_pays_exactly_the_bill(client, info.channel_id, PRICES)


# --- B3: two processes on one channel ---------------------------------------------------------


def _chat_process(market: Any, store: Path, message: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "TALLYSTICK_KEY": market.accounts.client.key.hex(),
        "TALLYSTICK_DEBUG": "",
        "COLUMNS": "200",
    }
    cmd = [str(CLI), "--store", str(store), "chat", "--model", MODEL, "-m", message]
    cmd += ["--max-tokens", "60"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_two_chat_processes_on_one_channel_take_turns_without_a_false_dispute(
    market: Any, start_node: Any, make_client: Any, tmp_path: Path
) -> None:
    start_node(env=SLOW)  # 60 ids at 0.1 s: each answer streams for about 6 s
    opener = make_client(market.accounts.client, "client")
    info = opener.channels.open(MODEL, DEPOSIT)
    store = tmp_path / "client.db"

    first = _chat_process(market, store, "first")
    wait_for(lambda: opener.store.pending(info.channel_id) is not None, 20, "the first request")
    second = _chat_process(market, store, "second")
    out1, err1 = first.communicate(timeout=60)
    out2, err2 = second.communicate(timeout=60)
    assert (first.returncode, second.returncode) == (0, 0), err1 + err2
    assert "in use by another process" in err2 and f"pid {first.pid}" in err2
    assert "verified bill: seq 1" in err1 and "verified bill: seq 2" in err2
    assert out1.strip() and out1.strip() == out2.strip()  # each got the whole answer
    assert opener.store.disputes() == []
    assert [line.seq for line in opener.bill(info.channel_id)] == [1, 2]
    _close_pays_exactly_the_bill(opener, info.channel_id, PRICES)


def test_a_crashed_lock_holder_does_not_block_the_channel(
    market: Any, start_node: Any, make_client: Any, tmp_path: Path
) -> None:
    start_node(env=SLOW)
    opener = make_client(market.accounts.client, "client")
    info = opener.channels.open(MODEL, DEPOSIT)
    holder = _chat_process(market, tmp_path / "client.db", "first")
    wait_for(lambda: opener.store.pending(info.channel_id) is not None, 20, "the first request")
    holder.kill()
    holder.wait(10)
    started = time.monotonic()
    reply = opener.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
    assert time.monotonic() - started < 10  # not the 30 s lease: the holder's pid is gone
    assert reply.tally is not None and opener.store.disputes() == []
    _close_pays_exactly_the_bill(opener, info.channel_id, PRICES)


# --- B4: an ERC-20 channel is claimed by the running node on its own ---------------------------


USDC_PRICES = Prices(input_per_m=10**11, output_per_m=3 * 10**11)  # 0.1 / 0.3 USDC a token


def test_the_running_node_claims_a_usdc_channel_on_its_own(
    market: Any, start_node: Any, make_client: Any
) -> None:
    usdc = market.deployment.usdc
    list_model(market.deployment, market.accounts.provider, MODEL, USDC_PRICES, token=usdc.address)
    usdc.mint(market.accounts.deployer, market.accounts.client.address, 100 * 10**6)
    # The default claim rule of a running node: gas multiple 5, no --min-claim; ERC-20
    # earnings are claimed from one whole token (10**6 base units) unclaimed.
    node = start_node(args=["--claim-gas-multiple", "5"])
    client = make_client(market.accounts.client, "client")
    info = client.channels.open(MODEL, 50 * 10**6)
    assert info.token.lower() == usdc.address.lower()
    for _ in range(3):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
    tally = client.store.tally(info.channel_id)
    spent = cost_of(tally.input_tokens, tally.output_tokens, USDC_PRICES)
    assert spent > 10**6  # more than one USDC countersigned
    wait_for(lambda: market.escrow.get_channel(info.channel_id).paid == spent, 30, "the claim")
    # Each pass's line says what it claimed in the token's units, with the token's address; the
    # passes together claimed the whole bill (one pass or several, as the receipts came in).
    claimed = re.compile(rf"claimMany 0x[0-9a-f]+ claimed ([0-9.]+) USDC \({usdc.address}\)")

    def logged() -> Decimal:
        return sum(
            (Decimal(m.group(1)) for m in map(claimed.search, node.log().splitlines()) if m),
            Decimal(0),
        )

    wait_for(lambda: logged() * 10**6 == spent, 10, "the claim lines")
    assert market.escrow.earnings(market.accounts.provider.address, usdc.address) == spent
    _close_pays_exactly_the_bill(client, info.channel_id, USDC_PRICES)
