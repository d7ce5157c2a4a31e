"""After a dispute, from the shell: see it, stop using the channel, leave it unilaterally.

A real node process that pads its bills (``_cheating_node.py``, special ids) on anvil; the
``tallystick`` CLI run in-process through ``main`` (one-line errors, exit codes).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from tallystick.client import BillingDispute

from tests.kit.chain import MODEL
from tests.kit.client import cli_args, run_cli
from tests.kit.node import MESSAGES, signed_post

pytestmark = pytest.mark.chain

DEPOSIT = 10**15


def test_disputes_are_listed_the_channel_refused_and_left_by_a_unilateral_close(
    market: Any,
    start_node: Any,
    make_client: Any,
    tmp_path: Path,
    advance_time: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    start_node(script="_cheating_node.py", env={"TALLY_CHEAT": "special_ids"})
    client = make_client(market.accounts.client, "client")
    info = client.channels.open(MODEL, DEPOSIT)
    with pytest.raises(BillingDispute) as caught:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=64)
    dispute_id, cid = caught.value.dispute_id, info.hex_id
    client.close()
    store = tmp_path / "client.db"  # make_client's store for "client"
    args = cli_args(market.anvil.url, market.deployment, market.accounts.client, store)

    # tallystick disputes: the table, then the way out with the challenge period's deadline
    code, out, _ = run_cli([*args, "disputes"], capsys)
    assert code == 0 and "specialIds" in out and "billed" in out
    assert f"close --unilateral {cid}" in out and "challenge period (3600 s)" in out
    code, raw, _ = run_cli([*args, "disputes", "--json"], capsys)
    (row,) = json.loads(raw)
    assert (row["id"], row["channelId"], row["seq"]) == (dispute_id, cid, 1)
    assert [m["field"] for m in row["mismatches"]] == ["specialIds"]
    assert row["evidence"]["tallystick"]["record"]["seq"] == 1  # the provider-signed record
    assert row["evidence"]["request"]["messages"] == MESSAGES
    assert "finalize" in row["wayOut"]
    # tallystick bill shows it too (README troubleshooting)
    code, out, _ = run_cli([*args, "bill"], capsys)
    assert code == 0 and "refused bills" in out and "specialIds" in out
    code, out, _ = run_cli([*args, "channel", "list"], capsys)
    assert code == 0 and "(disput" in out  # the narrow test terminal cuts the column

    # The SDK sends no more requests on it, and says how to leave
    code, _, err = run_cli([*args, "chat", "--model", MODEL, "-m", "hi", "--channel", cid], capsys)
    assert code == 1 and err.count("\n") == 1
    assert "is disputed" in err and f"channel close --unilateral {cid}" in err
    # A cooperative close cannot work (the node holds the refused record): the same way out
    code, _, err = run_cli([*args, "channel", "close", cid], capsys)
    assert code == 1 and err.count("\n") == 1 and "close --unilateral" in err

    code, out, _ = run_cli([*args, "channel", "close", "--unilateral", cid], capsys)
    closes_at = market.escrow.get_channel(info.channel_id).closes_at
    assert code == 0 and "402 channel_closing" in out and f"channel finalize {cid}" in out
    # Meanwhile the node serves nothing on the channel. It learns of the close from the chain
    # (its next channel read or settlement scan); until then the disputed client's stale seq
    # gets 409 stale_request: never a 200.
    codes = []
    for _ in range(50):
        resp = signed_post(
            market.endpoint,
            make_client(market.accounts.client, "client"),
            info,
            "/v1/chat/completions",
            {"model": MODEL, "messages": MESSAGES, "max_tokens": 4},
        )
        codes.append((resp.status_code, resp.json()["error"]["code"]))
        if codes[-1] == (402, "channel_closing"):
            break
        time.sleep(0.3)
    assert codes[-1] == (402, "channel_closing"), codes
    assert set(codes[:-1]) <= {(409, "stale_request")}, codes
    code, _, err = run_cli([*args, "channel", "finalize", cid], capsys)
    assert code == 1 and err.count("\n") == 1 and "ends at" in err

    held = market.w3.eth.get_balance(market.escrow.address)
    now = int(market.w3.eth.get_block("latest")["timestamp"])
    advance_time(closes_at - now)
    code, out, _ = run_cli([*args, "channel", "finalize", cid], capsys)
    assert code == 0 and "provider paid 0 ETH, refunded 0.001 ETH" in out
    assert market.escrow.get_channel(info.channel_id).status.name == "CLOSED"
    # The whole deposit went back: nothing of the refused bill was ever countersigned.
    assert held - market.w3.eth.get_balance(market.escrow.address) == DEPOSIT
