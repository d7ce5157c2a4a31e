"""Bill-time checks of what produced the ids (docs/protocol.md §10.2): every bill must state the
seed, temperature and top_p the client asked for and the modelHash its channel's listing
commits to; a record that is true to what the node did but not to what was asked is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from tallystick.client import BillingDispute, Tallystick, Wallet
from tallystick.protocol import ZERO_ROOT, params_units

from tests.kit.client import MODEL, Bill, FakeNode

LISTED = bytes.fromhex("ab" * 32)
MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture
def listed(wallet: Wallet, fake: FakeNode, tmp_path: Path) -> Iterator[Tallystick]:
    """A client whose channel was opened on a listing with a modelHash the honest fake states."""
    fake.model_hash = LISTED
    with Tallystick(wallet, tmp_path / "listed.db", transport=fake.transport) as c:
        c.store.add_channel(fake.channel_info())
        assert c.store.channel(fake.channel_id).model_hash == LISTED  # stored with the channel
        yield c


def _chat(client: Tallystick, stream: bool, **kw: Any) -> Any:
    reply = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=16, stream=stream, **kw
    )
    if stream:
        for _ in reply:
            pass
    return reply.tally


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_an_honest_bill_states_the_asked_sampling_and_the_listed_weights(
    listed: Tallystick, fake: FakeNode, stream: bool
) -> None:
    bill = _chat(listed, stream, seed=42, temperature=0.7, top_p=0.9)
    r = bill.record.record
    assert (r.seed, r.temperature, r.top_p) == (42, 700_000, 900_000)
    assert r.model_hash == LISTED
    assert listed.store.tally(fake.channel_id).seq == 1


def _seed(bill: Bill) -> None:
    bill.record = replace(bill.record, seed=bill.record.seed + 1)


def _temperature(bill: Bill) -> None:
    bill.record = replace(bill.record, temperature=1_000_000)


def _top_p(bill: Bill) -> None:
    bill.record = replace(bill.record, top_p=1_000_000)


def _model_hash(bill: Bill) -> None:
    bill.record = replace(bill.record, model_hash=bytes.fromhex("cd" * 32))


CHEATS: dict[str, tuple[Callable[[Bill], None], str, Any, Any]] = {
    "its own seed": (_seed, "seed", 42, 43),
    "a hotter temperature": (_temperature, "temperature", 700_000, 1_000_000),
    "no nucleus": (_top_p, "topP", 900_000, 1_000_000),
    "other weights": (_model_hash, "modelHash", "0x" + LISTED.hex(), "0x" + "cd" * 32),
}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("cheat", list(CHEATS))
def test_a_record_unlike_the_request_is_refused(
    listed: Tallystick, fake: FakeNode, cheat: str, stream: bool
) -> None:
    tamper, field, expected, got = CHEATS[cheat]
    fake.tamper = tamper
    with pytest.raises(BillingDispute) as caught:
        _chat(listed, stream, seed=42, temperature=0.7, top_p=0.9)
    assert [(m.field, m.expected, m.got) for m in caught.value.mismatches] == [
        (field, expected, got)
    ]
    tally = listed.store.tally(fake.channel_id)
    assert (tally.seq, tally.usage_root, tally.receipt) == (0, ZERO_ROOT, None)
    assert fake.receipts == []


def test_a_listing_without_a_model_hash_holds_no_bill_to_one(
    client: Tallystick, fake: FakeNode
) -> None:
    fake.tamper = _model_hash  # states some hash: the listing claimed none, nothing to hold
    assert client.store.channel(fake.channel_id).model_hash == bytes(32)
    assert _chat(client, False, seed=1).record.record.model_hash == bytes.fromhex("cd" * 32)


def test_a_body_without_a_seed_gets_one_of_the_clients_and_the_bill_must_state_it(
    client: Tallystick, fake: FakeNode
) -> None:
    openai = client.openai(fake.channel_id)  # the official client sends no seed of its own
    openai.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
    (sent,) = fake.requests
    assert isinstance(sent["seed"], int) and sent["seed"] >= 0
    assert client.store.bill(fake.channel_id)[0].record.record.seed == sent["seed"]
    fake.tamper = _seed
    with pytest.raises(BillingDispute) as caught:
        openai.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
    assert [m.field for m in caught.value.mismatches] == ["seed"]


def test_defaults_are_openais_and_a_node_may_not_assume_others(
    client: Tallystick, fake: FakeNode
) -> None:
    # No temperature or top_p in the body: the node's defaults (1.0) are what is asked.
    bill = _chat(client, False, seed=5)
    assert (bill.record.record.temperature, bill.record.record.top_p) == (10**6, 10**6)
    fake.tamper = lambda b: setattr(b, "record", replace(b.record, temperature=0))
    with pytest.raises(BillingDispute) as caught:
        _chat(client, False, seed=5)
    assert [(m.field, m.expected, m.got) for m in caught.value.mismatches] == [
        ("temperature", params_units(1.0), 0)
    ]
