"""Smoke test: the replicas section's ledger latency and PostgreSQL settlement parts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.chain


def test_ledger_latency_on_both_stores_and_settlement_from_postgres(results_dir: Path) -> None:
    from bench import replicas

    out = replicas.run(
        replicas.Config(parts=("ledger", "settlement"), ledger_requests=20, channels=4)
    )
    assert out["errors"] == {}
    for store in ("sqlite", "postgresql"):
        row = out["ledger"][store]
        assert row["requests"] == 20 and 0 < row["p50_ms"] <= row["p95_ms"]
        settle = out["settlement"][store]
        assert settle["channels"] == 4 and settle["settle_txs"] >= 1
    assert (
        out["settlement"]["postgresql"]["settle_txs"] == out["settlement"]["sqlite"]["settle_txs"]
    )
    saved = json.loads((results_dir / "replicas.json").read_text())
    assert {t["name"] for t in saved["targets"]} >= {
        "claimMany txs for the pass: PostgreSQL / SQLite"
    }
