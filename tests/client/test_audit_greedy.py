"""Greedy audits (docs/protocol.md §10.5): a record without a logit proof is audited only at
temperature 0 and only when its node advertises ``audit: "greedy"``; each id must then sit
within the greedy tolerance of the reference's best logit. The reference here is a stand-in
with fixed logits; the real path (llama-server, SmolLM2) is in test_audit_greedy_node.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from eth_account import Account
from tallystick.client import AuditCase, audit
from tallystick.client._audit import GREEDY_TOLERANCE
from tallystick.client._auditor import AuditLog, Auditor, case_from_response
from tallystick.protocol import (
    Domain,
    UsageBill,
    UsageRecord,
    hash_proof,
    hash_token_ids,
    params_units,
    sign_usage_record,
)

PROVIDER = Account.from_key(b"\x07" * 32)
DOMAIN = Domain(1, "0x" + "11" * 20)
WEIGHTS = b"\x05" * 32
PROMPT = [1, 2]


class Rows:
    """A reference whose logits are given: row i predicts completion id i."""

    model_hash = WEIGHTS

    def __init__(self, rows: list[list[float]]) -> None:
        self.rows = torch.tensor(rows, dtype=torch.float32)  # (n, vocab)

    def logits(self, prompt_ids: list[int], completion_ids: list[int]) -> torch.Tensor:
        assert prompt_ids == PROMPT and len(completion_ids) == len(self.rows)
        return self.rows


def _case(ids: list[int], temperature: float = 0.0, proof: list[int] | None = None) -> AuditCase:
    record = UsageRecord(
        b"\x01" * 32, 1, len(PROMPT), len(ids), hash_token_ids(PROMPT), hash_token_ids(ids),
        len(PROMPT), len(ids), bytes(32), seed=9, temperature=params_units(temperature),
        model_hash=WEIGHTS, proof_hash=hash_proof(proof or []),
    )  # fmt: skip
    signed = sign_usage_record(PROVIDER, DOMAIN, record)
    return AuditCase("m", PROVIDER.address, DOMAIN.chain_id, DOMAIN.escrow, signed,
                     PROMPT, ids, proof or [], 9, temperature)  # fmt: skip


# Row 0's best is id 0; row 1's best is id 2, id 1 sits 0.5 below it, id 0 sits 3.0 below.
ROWS = Rows([[4.0, 1.0, 0.0], [0.0, 2.5, 3.0]])


def test_a_greedy_id_within_the_tolerance_passes_one_far_below_fails() -> None:
    assert GREEDY_TOLERANCE > 0.5  # the measured llama.cpp worst sits inside it
    ok = audit(_case([0, 1]), ROWS)  # type: ignore[arg-type]
    assert ok.verdict == "pass", ok.reasons
    assert ok.figures["mode"] == "greedy"
    assert ok.figures["argmax_match_rate"] == 0.5 and ok.figures["min_margin"] == -0.5
    bad = audit(_case([0, 0]), ROWS)  # type: ignore[arg-type]
    assert bad.verdict == "fail"
    assert bad.figures["token_failures"] == 1 and bad.figures["min_margin"] == -3.0


def test_a_proofless_record_above_temperature_0_is_unverifiable_not_failed() -> None:
    report = audit(_case([0, 0], temperature=0.7), ROWS)  # type: ignore[arg-type]
    assert report.verdict == "unverifiable"
    assert "temperature above 0" in report.reasons[0]


@pytest.mark.parametrize(("terms", "verdict"), [("greedy", "fail"), ("none", "unverifiable")])
def test_the_auditor_audits_a_proofless_record_only_for_a_greedy_node(
    tmp_path: Path, terms: str, verdict: str
) -> None:
    log = AuditLog(tmp_path / "a.db")
    auditor = Auditor(log, fraction=1.0, reference=ROWS)  # type: ignore[arg-type]
    future = auditor.consider(_case([0, 0]), advertised=lambda: terms)
    assert future is not None
    assert future.result(timeout=30).verdict == verdict
    record = log.record(PROVIDER.address)
    assert record.failed == (1 if verdict == "fail" else 0) and record.passed == 0
    auditor.close()


def test_only_a_temperature_0_response_without_proof_becomes_a_case() -> None:
    case = _case([0, 1])
    bill = UsageBill(case.signed, [0, 1], []).to_json()
    channel = type("C", (), {"model": "m", "provider": PROVIDER.address, "chain_id": 1,
                             "escrow": DOMAIN.escrow})()  # fmt: skip
    made = case_from_response(channel, {"temperature": 0, "seed": 9}, PROMPT, bill)
    assert made is not None and made.proof == [] and made.temperature == 0.0
    assert case_from_response(channel, {"temperature": 0.7, "seed": 9}, PROMPT, bill) is None
    assert case_from_response(channel, {"seed": 9}, PROMPT, bill) is None  # default 1.0
