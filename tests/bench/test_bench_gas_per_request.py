"""Smoke test: gas per request on a real anvil, two batch sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.chain


def test_claim_many_gas_per_request_falls_with_requests_per_receipt(results_dir: Path) -> None:
    from bench import gas_per_request

    config = gas_per_request.Config(batches=(1, 2), per_receipt=(1, 50), baseline_samples=2)
    result = gas_per_request.run(config)

    rows = {(r["receipts"], r["requests_per_receipt"]): r for r in result["per_request"]}
    assert set(rows) == {(1, 1), (1, 50), (2, 1), (2, 50)}
    # One receipt's claim is shared by the requests it covers: 50 requests, 1/50 of the gas.
    assert rows[1, 50]["claim_gas_per_request"] == pytest.approx(rows[1, 50]["claim_tx_gas"] / 50)
    assert rows[2, 1]["claim_gas_per_request"] < rows[1, 1]["claim_gas_per_request"]
    base = result["baselines"]
    assert 21_000 < base["erc20_transfer"] < base["erc20_transferFrom"] < base["escrow_claim"]
    assert [t["name"].split(" (")[0] for t in result["targets"]] == ["50 requests per claim"]
    saved = json.loads((results_dir / "gas_per_request.json").read_text())
    assert saved["baselines"] == base
