"""A node killed with SIGKILL under load loses nothing and bills nothing twice (Guarantee 3).

Four SDK clients (four wallets, four channels, one thread each) send 200 chat requests to a
``tallystick-node serve`` process; the node is SIGKILLed in the middle and restarted on the
same ledger. Afterwards every countersigned receipt is in the ledger, the settlement worker
claims them all, and each channel's on-chain payment equals what its client countersigned.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from tallystick.protocol import cost_of

from tests.kit.chain import MODEL, PRICES
from tests.kit.client import ClientLoad
from tests.kit.net import wait_for
from tests.kit.node import channel_view

pytestmark = pytest.mark.chain

TOTAL = 200
CLIENTS = 4
DEPOSIT = 10**15


def test_sigkill_under_load_loses_no_receipt_and_bills_nothing_twice(
    market: Any, start_node: Any, make_client: Any, tmp_path: Path
) -> None:
    accounts = market.accounts
    node = start_node(env={"TALLY_FAKE_TOKEN_DELAY": "0.002"})
    wallets = [accounts.client, accounts.client2, accounts[6], accounts[7]]
    loads = []
    for i, account in enumerate(wallets):
        # Four users, four machines: each its own store and tokenizer cache. (Clients in one
        # process sharing a tokenizer directory race on its temporary file: client/_tokenizers
        # names it by pid only, so concurrent first requests fail with FileNotFoundError.)
        client = make_client(account, f"client{i}", tokenizer_dir=tmp_path / f"tokenizers{i}")
        info = client.channels.open(MODEL, DEPOSIT)
        loads.append(ClientLoad(client, info, TOTAL // CLIENTS))
    earnings_before = market.earnings()

    stop = threading.Event()
    threads = [threading.Thread(target=load.run, args=(stop,)) for load in loads]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: sum(ld.served for ld in loads) >= TOTAL * 2 // 5, 60, "40% of the load")
        node.kill()
        killed_at = sum(ld.served for ld in loads)
        time.sleep(0.5)  # clients hit a dead port meanwhile
        node.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
    assert killed_at < TOTAL, "the kill landed after the load had finished"
    for load in loads:
        assert load.served == load.target, (load.served, load.errors[-5:])
    assert any(load.errors for load in loads), "no client noticed the crash"

    paid_total = 0
    for load in loads:
        client, info = load.client, load.info
        tally = client.store.tally(info.channel_id)
        bill = client.bill(info.channel_id)
        # One bill line per request the node signed, consecutive seqs, and the cumulative
        # totals are exactly the sum of the per-request counts: nothing billed twice, nothing
        # skipped. A kill between the node's record write and its answer leaves one request
        # the caller saw fail but the SDK resolved from the restarted node's ledger (its
        # record, verified): at most one per channel, as the SDK sends one at a time.
        assert load.served <= tally.seq == len(bill) <= load.served + 1
        assert [line.seq for line in bill] == list(range(1, tally.seq + 1))
        assert sum(line.prompt_tokens for line in bill) == tally.input_tokens
        assert sum(line.completion_tokens for line in bill) == tally.output_tokens
        assert (
            tally.receipt is not None and tally.receipt.receipt.input_tokens == tally.input_tokens
        )

        # The restarted node holds the client's last countersigned receipt.
        client.biller.deliver(info)
        view = channel_view(client, info, node.url)
        assert view["countersigned"]["seq"] == tally.seq
        assert view["countersigned"]["inputTokens"] == tally.input_tokens
        assert view["countersigned"]["outputTokens"] == tally.output_tokens
        assert view["usageRoot"] == "0x" + tally.usage_root.hex()
        assert view["unpaid"] == 0

        spent = cost_of(tally.input_tokens, tally.output_tokens, PRICES)

        def claimed(cid: bytes = info.channel_id, want: int = spent) -> bool:
            return bool(market.escrow.get_channel(cid).paid == want)

        wait_for(claimed, 60, f"the worker to claim channel {info.hex_id}")
        state = market.escrow.get_channel(info.channel_id)
        assert (state.claimed_input, state.claimed_output) == (
            tally.input_tokens,
            tally.output_tokens,
        )
        paid_total += state.paid
    assert market.earnings() - earnings_before == paid_total
