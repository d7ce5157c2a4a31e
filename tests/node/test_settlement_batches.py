"""Settlement passes that fit in a block: batches by gas budget, most urgent first, batched
reads, and a retry backoff that resumes claims promptly (unit tests on the in-memory chain)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest
from eth_account import Account
from tallystick.node import (
    Candidate,
    ChannelCache,
    NodeMetrics,
    SettlementWorker,
    SqliteLedger,
    StoredReceipt,
    plan_batches,
)
from tallystick.node._claim_plan import GAS_BASE, GAS_FIRST_CLAIM, GAS_LATER_CLAIM
from tallystick.protocol import ChannelStatus, Domain, Receipt, cost_of, sign_receipt

from tests.kit.node_harness import ESCROW, PRICES, FakeChain, open_channel, settings

pytestmark = pytest.mark.anyio

PROVIDER = Account.from_key("0x" + "11" * 32)


def _market(tmp_path, n: int, **overrides):
    """n channels, each with a countersigned receipt of (100 * (i + 1), 10) tokens."""
    chain = FakeChain(Domain(31337, ESCROW), PROVIDER.address)
    ledger = SqliteLedger(tmp_path / "ledger.db")
    ids = []
    for i in range(n):
        client = Account.from_key("0x" + f"{i + 0x20:02x}" * 32)
        cid = open_channel(chain, client, deposit=10**9, nonce=i)
        receipt = Receipt(cid, 100 * (i + 1), 10, bytes([i + 1]) * 32)
        signed = sign_receipt(client, chain.domain, receipt)
        ledger.add_receipt(StoredReceipt(signed, 1, time.time()))
        ids.append(cid)
    cache = ChannelCache(chain, ledger, 60)
    worker = SettlementWorker(
        chain=chain,
        ledger=ledger,
        cache=cache,
        metrics=NodeMetrics(),
        settings=settings(**overrides),
    )
    return chain, ledger, worker, ids


async def test_a_pass_is_split_into_claims_that_fit_the_gas_budget(tmp_path):
    # Room for three first claims per transaction: 10 receipts need 4 transactions.
    budget = GAS_BASE + 3 * GAS_FIRST_CLAIM
    chain, ledger, worker, ids = _market(tmp_path, 10, settle_max_gas_per_tx=budget)
    outcomes = await worker.settle(force=True)
    assert [len(batch) for batch in chain.claim_calls] == [3, 3, 3, 1]
    assert len(outcomes) == 4 and len(ledger.claims()) == 4
    assert all(c.status == "confirmed" for c in ledger.claims())
    # Highest value first: channel i is worth 100 * (i + 1) input tokens.
    order = [r.receipt.channel_id for batch in chain.claim_calls for r in batch]
    assert order == list(reversed(ids))
    for cid in ids:
        receipt = ledger.last_receipt(cid).signed.receipt
        info = chain.channels[cid]
        assert info.paid == cost_of(receipt.input_tokens, receipt.output_tokens, PRICES)
    # The channel states came from two batched reads (candidates, then after the claims).
    assert (chain.batch_reads, chain.reads) == (2, 0)
    assert await worker.settle(force=True) == []
    ledger.close()


async def test_closing_channels_go_first_soonest_close_first(tmp_path):
    budget = GAS_BASE + 2 * GAS_FIRST_CLAIM
    chain, ledger, worker, ids = _market(tmp_path, 6, settle_max_gas_per_tx=budget)
    chain.request_close(ids[0], period=600)  # the least valuable, closing late
    chain.request_close(ids[1], period=60)  # closing first
    await worker.settle(force=True)
    first = [r.receipt.channel_id for r in chain.claim_calls[0]]
    assert first == [ids[1], ids[0]]
    ledger.close()


async def test_only_batches_worth_their_gas_are_sent(tmp_path):
    budget = GAS_BASE + 2 * GAS_FIRST_CLAIM
    chain, ledger, worker, ids = _market(
        tmp_path, 4, settle_max_gas_per_tx=budget, claim_gas_multiple=1.0
    )
    # Receipts are worth 120, 220, 320, 420: only the batch of the top two beats a cost of 600.
    chain.gas_cost = 600
    outcomes = await worker.settle(force=False)
    assert len(outcomes) == 1
    assert set(outcomes[0].claimed) == {ids[3], ids[2]}
    assert chain.channels[ids[0]].paid == 0
    ledger.close()


def test_plan_batches_counts_later_claims_cheaper():
    chain = FakeChain(Domain(31337, ESCROW), PROVIDER.address)
    client = Account.from_key("0x" + "22" * 32)
    found = []
    for i in range(4):
        cid = open_channel(chain, client, nonce=i)
        info = replace(chain.channels[cid], claimed_input=1, claimed_output=1)
        signed = sign_receipt(client, chain.domain, Receipt(cid, 9, 9, b"\x01" * 32))
        found.append(Candidate(StoredReceipt(signed, 2, 0.0), info, 10 - i))
    budget = GAS_BASE + 4 * GAS_LATER_CLAIM
    assert [len(b) for b in plan_batches(found, budget)] == [4]
    assert [len(b) for b in plan_batches(found, budget - 1)] == [3, 1]
    assert plan_batches([], budget) == []
    assert all(c.channel.status == ChannelStatus.OPEN for c in found)


async def test_retry_backoff_is_capped_so_claims_resume_promptly(tmp_path):
    chain, ledger, worker, ids = _market(
        tmp_path,
        1,
        poll_interval=0.05,
        settle_interval=0.05,
        settle_max_backoff=0.2,
        claim_gas_multiple=0.0,
    )
    # Six failures in a row: uncapped doubling from 0.05 s would wait 0.1+...+3.2 = 6.3 s.
    chain.fail_claims = 6
    started = time.monotonic()
    worker.start()
    try:
        while chain.channels[ids[0]].paid == 0:
            assert time.monotonic() - started < 3.0, "claims did not resume within the cap"
            await asyncio.sleep(0.02)
    finally:
        await worker.stop()
    assert [c.status for c in ledger.claims()].count("failed") == 6
    ledger.close()
