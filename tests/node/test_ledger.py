"""The ledger stores: every test runs against SQLite and a real PostgreSQL server."""

from __future__ import annotations

import threading
import time

import pytest
from eth_account import Account
from tallystick.node import (
    ClaimItem,
    PostgresLedger,
    SqliteLedger,
    StoredReceipt,
    StoredRecord,
    open_ledger,
)
from tallystick.protocol import (
    ZERO_ROOT,
    ChannelState,
    ChannelStatus,
    Domain,
    Prices,
    Receipt,
    UsageRecord,
    hash_token_ids,
    sign_receipt,
    sign_usage_record,
)

from tests.kit.ledger import STORES
from tests.kit.node_harness import ESCROW, TOKEN

DOMAIN = Domain(31337, ESCROW)
PROVIDER = Account.from_key("0x" + "11" * 32)
CLIENT = Account.from_key("0x" + "22" * 32)
CID = b"\x01" * 32
OTHER = b"\x02" * 32


@pytest.fixture(params=STORES)
def store(request, make_ledger):
    ledger = make_ledger(request.param)
    yield ledger
    ledger.close()


def record_after(prev: StoredRecord | None, channel_id: bytes = CID, n: int = 3) -> StoredRecord:
    rec = prev.signed.record if prev else None
    record = UsageRecord(
        channel_id=channel_id,
        seq=(rec.seq if rec else 0) + 1,
        prompt_tokens=n,
        completion_tokens=n,
        prompt_hash=hash_token_ids(list(range(n))),
        completion_hash=hash_token_ids(list(range(n))),
        input_tokens=(rec.input_tokens if rec else 0) + n,
        output_tokens=(rec.output_tokens if rec else 0) + n,
        prev_root=prev.usage_root if prev else ZERO_ROOT,
    )
    signed = sign_usage_record(PROVIDER, DOMAIN, record)
    return StoredRecord(signed, list(range(n)), "m", time.time(), {"ttft_ms": 1.5})


def receipt_for(stored: StoredRecord) -> StoredReceipt:
    rec = stored.signed.record
    receipt = Receipt(rec.channel_id, rec.input_tokens, rec.output_tokens, stored.usage_root)
    return StoredReceipt(sign_receipt(CLIENT, DOMAIN, receipt), rec.seq, time.time())


def channel(channel_id: bytes = CID, **kw) -> ChannelState:
    base = dict(
        channel_id=channel_id,
        client=CLIENT.address,
        provider=PROVIDER.address,
        token=TOKEN,
        status=ChannelStatus.OPEN,
        model_id=b"\x03" * 32,
        prices=Prices(10**18, 2 * 10**18),  # above int64: kept exactly
        deposit=10**30,
        paid=0,
        claimed_input=0,
        claimed_output=0,
        closes_at=0,
        session_key=None,
    )
    return ChannelState(**{**base, **kw})


def test_records_receipts_channels_claims_and_meta_round_trip(store):
    first = record_after(None)
    second = record_after(first)
    store.add_record(first)
    store.add_record(second)
    assert store.get_record(CID, 1) == first and store.last_record(CID) == second
    assert store.find_record(CID, second.usage_root) == second
    assert store.get_record(CID, 3) is None and store.last_record(OTHER) is None
    with pytest.raises(Exception):  # noqa: B017 - a seq is written once, by any store
        store.add_record(second)
    store.add_receipt(receipt_for(first))
    store.add_receipt(receipt_for(first))  # the same receipt again: ignored
    store.add_receipt(receipt_for(second))
    other = record_after(None, OTHER)
    store.add_record(other)
    store.add_receipt(receipt_for(other))
    assert store.last_receipt(CID).seq == 2
    assert sorted((r.channel_id, r.seq) for r in store.latest_receipts()) == [(CID, 2), (OTHER, 1)]
    store.put_channels([channel(), channel(OTHER)])
    store.put_channel(channel(paid=7, status=ChannelStatus.CLOSING))
    assert store.get_channel(CID) == channel(paid=7, status=ChannelStatus.CLOSING)
    assert {c.channel_id for c in store.channels()} == {CID, OTHER}
    items = [ClaimItem(CID, 2, 6, 6, "pending"), ClaimItem(OTHER, 1, 3, 3, "pending")]
    claim = store.add_claim(items)
    store.finish_claim(
        claim,
        status="confirmed",
        tx_hash="0xab",
        gas_used=5,
        amount=10**25,
        skipped={OTHER: "EscrowBadSignature"},
    )
    (row,) = store.claims()
    assert (row.claim_id, row.status, row.amount, row.gas_used) == (claim, "confirmed", 10**25, 5)
    assert {i.channel_id: (i.status, i.reason) for i in row.items} == {
        CID: ("claimed", None),
        OTHER: ("skipped", "EscrowBadSignature"),
    }
    store.set_meta("k", "v")
    store.set_meta("k", "w")
    assert store.get_meta("k") == "w" and store.get_meta("none") is None


def test_the_book_counts_records_receipts_reservations_and_closing(store):
    first = record_after(None)
    store.add_record(first)
    store.add_receipt(receipt_for(first))
    store.add_record(record_after(first))
    a = store.add_reservation(CID, "replica-a", 10, 100)
    store.add_reservation(CID, "replica-b", 5, 50)
    store.add_reservation(OTHER, "replica-a", 1, 1)
    book = store.book(CID)
    assert (book.seq, book.countersigned_seq, book.totals) == (2, 1, (6, 6))
    assert (book.in_flight, book.reserved_input, book.reserved_output) == (2, 15, 150)
    assert not book.closing
    store.drop_reservation(a)
    store.set_closing(CID)
    store.set_closing(CID)
    book = store.book(CID)
    assert (book.in_flight, book.reserved_input, book.closing) == (1, 5, True)


def test_a_silent_replicas_reservations_are_dropped(store):
    store.heartbeat("a", now=100.0, ttl=10)
    store.heartbeat("b", now=100.0, ttl=10)
    store.add_reservation(CID, "a", 1, 10)
    store.add_reservation(CID, "b", 1, 20)
    store.heartbeat("a", now=105.0, ttl=10)
    assert store.book(CID).in_flight == 2  # b is late but not yet dead
    store.heartbeat("a", now=111.0, ttl=10)
    book = store.book(CID)
    assert (book.in_flight, book.reserved_output) == (1, 10)


def test_the_lease_has_one_holder_until_it_lapses_or_is_released(store):
    assert store.acquire_lease("settlement", "a", now=0, ttl=10)
    assert not store.acquire_lease("settlement", "b", now=5, ttl=10)
    assert store.acquire_lease("settlement", "a", now=9, ttl=10)  # renewed to 19
    assert not store.acquire_lease("settlement", "b", now=15, ttl=10)
    assert store.acquire_lease("settlement", "b", now=20, ttl=10)  # a died: b takes over
    assert not store.acquire_lease("settlement", "a", now=21, ttl=10)
    store.release_lease("settlement", "a")  # not a's to release
    assert not store.acquire_lease("settlement", "a", now=22, ttl=10)
    store.release_lease("settlement", "b")
    assert store.acquire_lease("settlement", "a", now=23, ttl=10)
    assert store.acquire_lease("other", "b", now=23, ttl=10)


def test_a_failed_transaction_leaves_nothing(store):
    first = record_after(None)
    with pytest.raises(RuntimeError), store.channel_lock(CID):
        store.add_record(first)
        store.add_reservation(CID, "a", 1, 1)
        raise RuntimeError("crash between the writes")
    assert store.last_record(CID) is None and store.book(CID).in_flight == 0
    store.add_record(first)  # the store is usable after the rollback
    assert store.last_record(CID) == first


def _second_connection(store):
    kind = PostgresLedger if isinstance(store, PostgresLedger) else SqliteLedger
    return kind(store.url)


def test_channel_lock_holds_the_channel_against_another_connection(store):
    other = _second_connection(store)
    entered = threading.Event()
    order: list[str] = []

    def contender() -> None:
        with other.channel_lock(CID):
            order.append("other")
            entered.set()

    with store.channel_lock(CID):
        thread = threading.Thread(target=contender)
        thread.start()
        assert not entered.wait(0.5), "the other connection got the channel while we held it"
        order.append("holder")
    thread.join(10)
    assert order == ["holder", "other"]
    other.close()


def test_writers_on_many_connections_never_reuse_a_seq(store):
    """Each writer signs seq+1 of what it reads, as replicas do; the lock makes it a chain."""
    writers, rounds = 4, 15
    stores = [_second_connection(store) for _ in range(writers)]
    errors: list[BaseException] = []

    def write(ledger) -> None:
        try:
            for _ in range(rounds):
                with ledger.channel_lock(CID):
                    ledger.add_record(record_after(ledger.book(CID).last))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    last = store.last_record(CID)
    assert last.seq == writers * rounds
    prev = None
    for seq in range(1, last.seq + 1):  # one unbroken usage chain
        rec = store.get_record(CID, seq)
        assert rec.signed.record.prev_root == (prev.usage_root if prev else ZERO_ROOT)
        prev = rec
    for s in stores:
        s.close()


def test_open_ledger_picks_the_store_from_the_location(tmp_path, pg_url):
    sqlite = open_ledger(tmp_path / "x.db")
    pg = open_ledger(pg_url)
    assert isinstance(sqlite, SqliteLedger) and isinstance(pg, PostgresLedger)
    sqlite.close()
    pg.close()


def test_an_unreachable_postgres_is_a_clear_error_without_the_password():
    from tallystick.node import ConfigError

    with pytest.raises(ConfigError, match="cannot connect to the PostgreSQL ledger") as info:
        open_ledger("postgresql://tally:s3cret@127.0.0.1:1/ledger")
    assert "s3cret" not in str(info.value) and "tally:***@127.0.0.1:1" in str(info.value)


def test_a_postgres_ledger_reconnects_after_the_connection_drops(pg_url):
    ledger = PostgresLedger(pg_url)
    ledger.set_meta("k", "v")
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    with pytest.raises(psycopg.OperationalError):
        ledger.get_meta("k")  # the call in flight when the server hung up fails
    assert ledger.get_meta("k") == "v"  # the next one reconnects
    ledger.close()
