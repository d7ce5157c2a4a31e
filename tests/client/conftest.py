"""Fixtures for the client's unit tests: a wallet, a fake node and a client wired to it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from client_fakenode import FakeNode, new_provider
from tallystick.client import Tallystick, Wallet


@pytest.fixture
def wallet() -> Wallet:
    return Wallet.from_key("0x" + os.urandom(32).hex())


@pytest.fixture
def fake(wallet: Wallet) -> FakeNode:
    return FakeNode(new_provider(), wallet.address, os.urandom(32))


@pytest.fixture
def client(wallet: Wallet, fake: FakeNode, tmp_path: Path) -> Iterator[Tallystick]:
    """A client on a store holding one open channel to the fake node."""
    with Tallystick(wallet, tmp_path / "store.db", transport=fake.transport) as c:
        c.store.add_channel(fake.channel_info())
        yield c
