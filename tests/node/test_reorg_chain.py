"""The node on a chain that reorganises (anvil's ``anvil_reorg`` and ``evm_revert``).

Opens and top-ups are served on only ``confirmations`` blocks deep; a claim that a reorg
dropped is claimed again by the next settlement pass, because the worker compares the
ledger's receipts with the totals the chain has claimed, never with its own claim history.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from tallystick.node import NodeMetrics, Settings, SqliteLedger, StoredReceipt
from tallystick.node._chain import ChannelCache
from tallystick.node._escrow import EscrowChain
from tallystick.node._settlement import SettlementWorker
from tallystick.protocol import Receipt, cost_of, sign_receipt

from tests.kit.node import NODE_PRICES as PRICES

pytestmark = pytest.mark.chain


def _chain(deployment: Any, provider: Any, confirmations: int) -> EscrowChain:
    return EscrowChain(deployment.escrow, deployment.registry, provider, confirmations)


def test_an_open_and_a_top_up_are_served_on_only_after_confirmations(
    listed_channel: Any,
    accounts: Any,
    w3: Any,
) -> None:
    deployment, _, cid = listed_channel
    chain = _chain(deployment, accounts.provider, confirmations=2)
    assert asyncio.run(chain.channel(cid)) is None  # opened in the head block only
    w3.provider.make_request("anvil_mine", [2])
    assert asyncio.run(chain.channel(cid)).deposit == 10**17
    deployment.escrow.top_up(accounts.client, cid, 10**16)
    assert asyncio.run(chain.channel(cid)).deposit == 10**17  # 0 blocks on top: not yet
    w3.provider.make_request("anvil_reorg", [1, []])  # the top-up's block is replaced
    w3.provider.make_request("anvil_mine", [3])
    assert deployment.escrow.get_channel(cid).deposit == 10**17
    assert asyncio.run(chain.channel(cid)).deposit == 10**17  # never served on
    deployment.escrow.top_up(accounts.client, cid, 10**16)
    w3.provider.make_request("anvil_mine", [2])
    assert asyncio.run(chain.channel(cid)).deposit == 11 * 10**16


def _receipt(client: Any, deployment: Any, cid: bytes, totals: tuple[int, int]) -> StoredReceipt:
    receipt = Receipt(cid, totals[0], totals[1], bytes([totals[0] % 256]) * 32)
    return StoredReceipt(sign_receipt(client, deployment.escrow.domain, receipt), 1, 0.0)


@pytest.mark.parametrize("how", ["anvil_reorg", "evm_revert"])
def test_a_claim_dropped_by_a_reorg_is_claimed_again_on_the_next_pass(
    listed_channel: Any,
    accounts: Any,
    w3: Any,
    tmp_path: Any,
    how: str,
) -> None:
    deployment, _, cid = listed_channel
    ledger = SqliteLedger(tmp_path / "ledger.db")
    ledger.add_receipt(_receipt(accounts.client, deployment, cid, (1000, 500)))
    chain = _chain(deployment, accounts.provider, confirmations=2)
    settings = Settings(
        confirmations=2,
        rpc="http://unused",
        escrow=deployment.escrow.address,
        registry=deployment.registry.address,
        claim_gas_multiple=0,
    )
    worker = SettlementWorker(
        chain=chain,
        ledger=ledger,
        cache=ChannelCache(chain, ledger, 0),
        metrics=NodeMetrics(),
        settings=settings,
    )
    want = cost_of(1000, 500, PRICES)

    snapshot = w3.provider.make_request("evm_snapshot", [])["result"]
    (first,) = asyncio.run(worker.settle(force=False))
    assert first.amount == want and deployment.escrow.get_channel(cid).paid == want
    if how == "anvil_reorg":
        w3.provider.make_request("anvil_reorg", [1, []])  # the claim's block, replaced
    else:
        w3.provider.make_request("evm_revert", [snapshot])
        w3.provider.make_request("anvil_mine", [1])
    assert deployment.escrow.get_channel(cid).paid == 0  # the chain forgot the claim
    assert ledger.claims()[0].status == "confirmed"  # the ledger has not; it must not matter
    # The worker's loop checks finality before each pass: the lost claim becomes "reorged".
    asyncio.run(worker.check_finality())
    assert [c.status for c in ledger.claims()] == ["reorged"]
    (again,) = asyncio.run(worker.settle(force=False))
    # The re-sent claim may be byte-identical to the lost one (same nonce, data and fees,
    # so the same hash): what matters is that the chain has it again.
    assert again.amount == want
    assert deployment.escrow.get_channel(cid).paid == want
    assert asyncio.run(worker.settle(force=False)) == []  # and only once
    # The ledger's history follows: the lost claim stays "reorged", the new one becomes
    # "final" once two blocks deep (confirmations=2), not before.
    asyncio.run(worker.check_finality())
    assert [c.status for c in ledger.claims()] == ["confirmed", "reorged"]
    w3.provider.make_request("anvil_mine", [1])
    asyncio.run(worker.check_finality())
    assert [c.status for c in ledger.claims()] == ["final", "reorged"]
    ledger.close()
