"""The node's ledger stores for tests: a throw-away PostgreSQL cluster and fresh stores.

- ``postgres``: a PostgreSQL cluster per session (``bench/_postgres.py``); ``pg_url``: the URL
  of a fresh empty database on it.
- ``make_ledger("sqlite" | "postgresql")``: a fresh, empty ledger store of that kind;
  ``STORES`` lists both, for tests parametrized over them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

STORES = ["sqlite", "postgresql"]  # the ledger stores the gate tests run against


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """A throw-away PostgreSQL cluster for the session (``bench/_postgres.py``)."""
    from bench._postgres import PgCluster

    cluster = PgCluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(postgres: Any) -> str:
    """The URL of an empty database on the session's cluster."""
    return str(postgres.new_database())


@pytest.fixture
def make_ledger(tmp_path: Path, request: pytest.FixtureRequest) -> Callable[[str], Any]:
    """``make_ledger("sqlite" | "postgresql")``: a fresh, empty store of that kind."""
    from tallystick.node import PostgresLedger, SqliteLedger

    def factory(kind: str) -> Any:
        if kind == "postgresql":
            return PostgresLedger(request.getfixturevalue("postgres").new_database())
        return SqliteLedger(tmp_path / f"ledger-{len(list(tmp_path.iterdir()))}.db")

    return factory
