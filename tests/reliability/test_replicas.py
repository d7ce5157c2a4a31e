"""Several replicas, one provider: N node processes share one PostgreSQL ledger.

Three ``tallystick-node serve`` processes (FakeEngine, the real CLI, uvicorn, chain client and
settlement worker) run on one PostgreSQL ledger behind a round-robin front registered as the
provider's endpoint; every request of a channel lands on the next replica. The replica holding
the settlement lease is SIGKILLed mid-load. Afterwards no receipt is lost, no seq was used
twice (one unbroken usage chain per channel in the ledger), another replica took the lease,
and each channel's on-chain payment equals the client's verified bill.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from tallystick.protocol import ZERO_ROOT, UsageRecord, cost_of

from bench._front import RoundRobinFront
from tests.kit.chain import MODEL, PRICES
from tests.kit.client import ClientLoad
from tests.kit.net import free_port, wait_for
from tests.kit.node import MESSAGES, channel_view, signed_get, signed_post

pytestmark = pytest.mark.chain

REPLICAS = 3
DEPOSIT = 10**15
PER_CLIENT = 30
TTL = "2"  # --replica-ttl: a dead replica's lease and reservations lapse after 2 s


@pytest.fixture
def replicas(market: Any, start_node: Any, pg_url: str) -> Any:
    nodes = [
        start_node(
            port=free_port(),
            name=f"replica{i}",
            args=["--ledger", pg_url, "--replica-ttl", TTL],
            # A reply longer than any max_tokens here: the credit-rule test's first request
            # really generates its 1,500 ids (the scripted default reply ends after 18).
            env={"TALLY_FAKE_TOKEN_DELAY": "0.003", "TALLY_FAKE_REPLY": " tally" * 2000},
        )
        for i in range(REPLICAS)
    ]
    front = RoundRobinFront(market.port, [n.url for n in nodes])
    yield nodes, front
    front.close()


def _lease_holder(pg_url: str, nodes: list[Any]) -> Any:
    with psycopg.connect(pg_url) as db:
        row = db.execute("SELECT owner FROM leases WHERE name = 'settlement'").fetchone()
    assert row is not None, "no replica took the settlement lease"
    (holder,) = [n for n in nodes if f"by replica {row[0]}" in n.log()]
    return holder


def test_replicas_share_one_channel_and_survive_a_sigkill(
    market: Any, replicas: Any, make_client: Any, pg_url: str, tmp_path: Path
) -> None:
    nodes, front = replicas
    accounts = market.accounts
    loads = []
    for i, account in enumerate([accounts.client, accounts.client2, accounts[6]]):
        client = make_client(account, f"client{i}", tokenizer_dir=tmp_path / f"tok{i}")
        loads.append(ClientLoad(client, client.channels.open(MODEL, DEPOSIT), PER_CLIENT))
    earnings_before = market.earnings()
    wait_for(lambda: any("lease taken" in n.log() for n in nodes), 30, "a settlement leader")
    victim = _lease_holder(pg_url, nodes)

    stop = threading.Event()
    threads = [threading.Thread(target=ld.run, args=(stop,)) for ld in loads]
    for t in threads:
        t.start()
    try:
        total = PER_CLIENT * len(loads)
        wait_for(lambda: sum(ld.served for ld in loads) >= total * 2 // 5, 90, "40% of the load")
        victim.kill()
        killed_at = sum(ld.served for ld in loads)
        for t in threads:
            t.join(timeout=180)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
    assert killed_at < total, "the kill landed after the load had finished"
    for ld in loads:
        assert ld.served == ld.target, (ld.served, ld.errors[-5:])
    alive = [n for n in nodes if n is not victim]
    assert all(front.served[n.url] > 0 for n in nodes), front.served  # every replica served

    paid_total = 0
    for ld in loads:
        client, info = ld.client, ld.info
        tally = client.store.tally(info.channel_id)
        bill = client.bill(info.channel_id)
        assert [line.seq for line in bill] == list(range(1, tally.seq + 1))
        assert tally.seq >= ld.served
        assert sum(line.prompt_tokens for line in bill) == tally.input_tokens
        assert sum(line.completion_tokens for line in bill) == tally.output_tokens
        _assert_one_usage_chain(pg_url, info.channel_id, tally)

        client.biller.deliver(info)
        for node in alive:  # every live replica sees the same book
            view = channel_view(client, info, node.url)
            assert view["countersigned"]["seq"] == view["lastSeq"] == tally.seq
            assert view["usageRoot"] == "0x" + tally.usage_root.hex()
            assert view["unpaid"] == 0 and view["inFlight"] == 0

        spent = cost_of(tally.input_tokens, tally.output_tokens, PRICES)

        def claimed(cid: bytes = info.channel_id, want: int = spent) -> bool:
            return bool(market.escrow.get_channel(cid).paid == want)

        wait_for(claimed, 60, f"the new leader to claim channel {info.hex_id}")
        paid_total += market.escrow.get_channel(info.channel_id).paid
    assert market.earnings() - earnings_before == paid_total
    new_leader = _lease_holder(pg_url, nodes)
    assert new_leader is not victim
    with psycopg.connect(pg_url) as db:
        skipped = db.execute("SELECT COUNT(*) FROM claim_items WHERE status = 'skipped'")
        assert skipped.fetchone()[0] == 0, "two replicas claimed the same receipt"


def _assert_one_usage_chain(pg_url: str, channel_id: bytes, tally: Any) -> None:
    with psycopg.connect(pg_url) as db:
        rows = db.execute(
            "SELECT seq, record FROM records WHERE channel_id = %s ORDER BY seq", (channel_id,)
        ).fetchall()
    import json

    records = [UsageRecord.from_json(json.loads(r[1])) for r in rows]
    assert [r.seq for r in records] == list(range(1, tally.seq + 1))
    root = ZERO_ROOT
    for rec in records:
        assert rec.prev_root == root
        root = rec.usage_root()
    assert root == tally.usage_root


def test_the_credit_rule_holds_across_replicas(
    market: Any, replicas: Any, make_client: Any, tmp_path: Path
) -> None:
    """Two requests of one channel at once on two replicas: credit 1 lets exactly one through."""
    nodes, _ = replicas
    client = make_client(market.accounts.client, "c", tokenizer_dir=tmp_path / "tok")
    info = client.channels.open(MODEL, DEPOSIT)
    # 1,500 ids at 0.003 s each (the nodes' reply is longer): the first request stays in flight
    # for ~4.5 s, long enough for the other replica's view to be polled while it runs.
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 1500}
    results: list[httpx.Response] = []

    def post(url: str, seq: int) -> None:
        # Signed for seq 1 and 2: the second is the client's next request while the first runs.
        results.append(signed_post(url, client, info, "/v1/chat/completions", body, seq=seq))

    threads = [
        threading.Thread(target=post, args=(n.url, seq)) for seq, n in enumerate(nodes[:2], start=1)
    ]
    view = f"/v1/tally/channels/{info.hex_id}"
    threads[0].start()
    # The second goes once the first is generating (0.003 s a token), as the other replica sees.
    wait_for(
        lambda: signed_get(nodes[1].url, client, info, view).json()["inFlight"] == 1,
        10,
        "the first request in flight",
    )
    threads[1].start()
    for t in threads:
        t.join(60)
    codes = sorted(r.status_code for r in results)
    assert codes == [200, 402], [r.text for r in results]
    refused = next(r for r in results if r.status_code == 402)
    assert refused.json()["error"]["code"] == "receipt_required"
