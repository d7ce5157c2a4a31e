"""The audit log, the background auditor's sampling and discovery's ranking (§10.4, §10.7)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from eth_account import Account
from tallystick.client import AuditCase, AuditReport
from tallystick.client._auditor import AuditLog, Auditor, rank_by_audits
from tallystick.protocol import Domain, Prices, UsageRecord, hash_token_ids, sign_usage_record

PROVIDER = Account.from_key(b"\x07" * 32)
OTHER = Account.from_key(b"\x08" * 32)


def _report(verdict: str, provider: str = PROVIDER.address, seq: int = 1) -> AuditReport:
    record = UsageRecord(b"\x01" * 32, seq, 1, 1, hash_token_ids([1]), hash_token_ids([2]), 1, 1,
                         bytes(32))  # fmt: skip
    signed = sign_usage_record(PROVIDER, Domain(1, "0x" + "11" * 20), record)
    case = AuditCase("m", provider, 1, "0x" + "11" * 20, signed, [1], [2], [0], 0, 0.0)
    return AuditReport(verdict, [] if verdict == "pass" else ["x"], {"tokens": 1}, case)


def test_the_log_counts_verdicts_per_provider_and_keeps_failed_reports(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.db")
    log.add(_report("pass"))
    log.add(_report("pass", seq=2))
    assert log.record(PROVIDER.address).trusted
    log.add(_report("fail", seq=3))
    record = log.record(PROVIDER.address.lower())
    assert (record.passed, record.failed, record.trusted) == (2, 1, False)
    (failed,) = log.failures(PROVIDER.address)
    assert failed.to_json() == _report("fail", seq=3).to_json()
    assert log.failures(OTHER.address) == []
    log.close()


@dataclass
class _Offer:
    provider: str
    prices: Prices


def test_discovery_drops_failed_providers_and_ranks_published_reports_last(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.db")
    cheap = _Offer(PROVIDER.address, Prices(1, 1))
    dear = _Offer(OTHER.address, Prices(5, 5))
    assert rank_by_audits([dear, cheap], log) == [cheap, dear]
    assert rank_by_audits([dear, cheap], log, {PROVIDER.address: 1}) == [dear, cheap]
    log.add(_report("fail"))
    assert rank_by_audits([dear, cheap], log) == [dear]
    log.close()


def test_the_auditor_samples_its_fraction_and_refuses_a_bad_one(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fraction"):
        Auditor(AuditLog(tmp_path / "a.db"), fraction=1.5)
    never = Auditor(AuditLog(tmp_path / "b.db"), fraction=0.0)
    assert never.consider(_report("pass").case) is None
    assert never.scheduled == []
    never.close()
