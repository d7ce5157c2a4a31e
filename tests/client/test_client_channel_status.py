"""The store keeps a channel's status as the protocol's ChannelStatus, spelled as its label."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tallystick.client import Store
from tallystick.client._dashboard import dashboard_data
from tallystick.protocol import ETH_INFO, ChannelStatus

from tests.kit.client import FakeNode


def test_status_round_trips_as_the_enum_and_is_stored_as_its_label(
    fake: FakeNode, tmp_path: Path
) -> None:
    path = tmp_path / "store.db"
    store = Store(path)
    store.add_channel(fake.channel_info())
    assert store.channel(fake.channel_id).status is ChannelStatus.OPEN
    store.update_channel(fake.channel_id, status=ChannelStatus.CLOSING)
    assert store.channel(fake.channel_id).status is ChannelStatus.CLOSING
    assert [c.channel_id for c in store.channels(status=ChannelStatus.CLOSING)] == [fake.channel_id]
    assert store.channels(status=ChannelStatus.OPEN) == []
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT status FROM channels").fetchone() == ("closing",)
    data = dashboard_data(store, lambda token: ETH_INFO, since=0.0)
    assert [c["status"] for c in data["channels"]] == ["closing"]  # JSON: the label, not 2
