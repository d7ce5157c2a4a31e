"""Smoke test: protocol costs with the tiny tokenizer (no model) and given serving figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


def test_verifier_builds_an_honest_bill_of_the_asked_size(tiny_counter: Any) -> None:
    from tallystick.protocol import Receipt, recover_receipt_signer

    from bench.protocol_costs import Verifier

    verifier = Verifier(tiny_counter, 120)
    assert 100 <= len(verifier.prompt_ids) <= 120
    signed = verifier.verify()
    assert recover_receipt_signer(verifier.domain, signed) == verifier.client.address
    r = verifier.signed.record
    assert signed.receipt == Receipt(r.channel_id, r.input_tokens, r.output_tokens, r.usage_root())


def test_a_padded_bill_does_not_verify(tiny_counter: Any) -> None:
    from tallystick.client import BillingDispute

    from bench.protocol_costs import Verifier

    verifier = Verifier(tiny_counter, 60)
    verifier.completion_ids = [*verifier.completion_ids, verifier.completion_ids[-1]]
    with pytest.raises(BillingDispute):
        verifier.verify()


def test_run_reports_targets_and_the_node_added_ttft(tiny_counter: Any, results_dir: Path) -> None:
    from bench import protocol_costs

    result = protocol_costs.run(
        {"node_added_ttft_s": 0.004}, counter=tiny_counter, sign_n=5, verify_n=3
    )
    assert result["node_added_ttft_ms"] == pytest.approx(4.0)
    names = [t["name"] for t in result["targets"]]
    assert names[:4] == [
        "request signature sign p50 (client)",
        "request signature verify p50 (node)",
        "receipt sign p50",
        "receipt verify p50",
    ]
    assert all(v["p50_ms"] > 0 for v in result["signing"].values())
    assert (results_dir / "protocol_costs.json").exists()
