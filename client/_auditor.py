"""Background audits (docs/protocol.md §10.4): a client-set fraction of verified bills is
audited off the request path, results are kept per provider, and a provider with a failed
audit is no longer used.

``Auditor.consider`` is called after a bill is countersigned; it only copies what the audit
needs and hands it to one worker thread. ``AuditLog`` is a small SQLite file beside the
client store (``<store>.audits.db``): every verdict, and every failed report in full.
"""

from __future__ import annotations

import json
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._audit import AuditCase, AuditReport, Reference, audit

__all__ = ["DEFAULT_AUDIT_FRACTION", "AuditLog", "AuditRecord", "Auditor", "rank_by_audits"]

log = logging.getLogger("tallystick.client")

DEFAULT_AUDIT_FRACTION = 0.05  # of requests, when the client holds the listed weights

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audits (
    id INTEGER PRIMARY KEY AUTOINCREMENT, provider TEXT NOT NULL, model TEXT NOT NULL,
    channel_id TEXT NOT NULL, seq INTEGER NOT NULL, verdict TEXT NOT NULL, report TEXT,
    created_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS audits_provider ON audits (provider);
"""


@dataclass(frozen=True)
class AuditRecord:
    """A provider's audit record as this client has seen it."""

    provider: str
    passed: int
    failed: int

    @property
    def trusted(self) -> bool:
        return self.failed == 0


class AuditLog:
    """Every audit verdict per provider; failed reports in full (self-contained evidence)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.executescript(_SCHEMA)

    def add(self, report: AuditReport) -> None:
        case = report.case
        keep = None if report.passed else json.dumps(report.to_json())
        with self._lock:
            self._db.execute(
                "INSERT INTO audits (provider, model, channel_id, seq, verdict, report, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    case.provider.lower(),
                    case.model,
                    "0x" + case.signed.record.channel_id.hex(),
                    case.signed.record.seq,
                    report.verdict,
                    keep,
                    time.time(),
                ),
            )

    def record(self, provider: str) -> AuditRecord:
        with self._lock:
            rows = self._db.execute(
                "SELECT verdict, COUNT(*) FROM audits WHERE provider = ? GROUP BY verdict",
                (provider.lower(),),
            ).fetchall()
        counts = dict(rows)
        return AuditRecord(provider, counts.get("pass", 0), counts.get("fail", 0))

    def failures(self, provider: str | None = None) -> list[AuditReport]:
        with self._lock:
            rows = self._db.execute(
                "SELECT report FROM audits WHERE verdict = 'fail' AND (? IS NULL OR provider = ?) "
                "ORDER BY id",
                (provider and provider.lower(), provider and provider.lower()),
            ).fetchall()
        return [AuditReport.from_json(json.loads(r[0])) for r in rows]

    def close(self) -> None:
        self._db.close()


class Auditor:
    """Audits ``fraction`` of the bills it is shown, in one background thread."""

    def __init__(
        self,
        log_: AuditLog,
        weights: str | Path | None = None,
        *,
        fraction: float = DEFAULT_AUDIT_FRACTION,
        reference: Reference | None = None,
    ) -> None:
        if not 0 <= fraction <= 1:
            raise ValueError(f"the audit fraction must be in [0, 1], got {fraction}")
        self.log = log_
        self.fraction = fraction
        self._weights = weights
        self._reference = reference
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tallystick-audit")
        self._ref_lock = threading.Lock()
        self.scheduled: list[Future[AuditReport]] = []

    def reference(self) -> Reference:
        with self._ref_lock:
            if self._reference is None:
                if self._weights is None:
                    raise ValueError("no reference weights: pass audit_weights=PATH")
                self._reference = Reference.load(self._weights)
            return self._reference

    def consider(
        self, case: AuditCase, advertised: Callable[[], str] | None = None
    ) -> Future[AuditReport] | None:
        """Maybe schedule an audit of ``case``; never blocks the request. ``advertised`` tells
        the node's ``audit`` terms, asked (off the request path) for a case without a proof."""
        if self.fraction <= 0 or secrets.randbelow(1_000_000) >= self.fraction * 1_000_000:
            return None
        return self.submit(case, advertised)

    def submit(
        self, case: AuditCase, advertised: Callable[[], str] | None = None
    ) -> Future[AuditReport]:
        future = self._pool.submit(self._run, case, advertised)
        self.scheduled.append(future)
        return future

    def drain(self, timeout: float | None = None) -> list[AuditReport]:
        """Wait for every scheduled audit; their reports, oldest first (then forgotten)."""
        done, self.scheduled = self.scheduled, []
        return [f.result(timeout=timeout) for f in done]

    def _run(self, case: AuditCase, advertised: Callable[[], str] | None = None) -> AuditReport:
        if not case.proof:
            # Greedy audits hold only where measured (llama.cpp, §10.5); elsewhere a
            # proof-less record proves nothing either way, and is not held against anyone.
            terms = advertised() if advertised is not None else "none"
            if terms != "greedy":
                reason = f"the node advertises audit {terms!r}: its records are not audited"
                return AuditReport("unverifiable", [reason], {}, case)
        report = audit(case, self.reference())
        if report.verdict != "unverifiable":
            self.log.add(report)
        if report.verdict == "fail":
            log.warning(
                "audit failed: provider %s, model %s, channel 0x%s seq %d: %s",
                case.provider,
                case.model,
                case.signed.record.channel_id.hex(),
                case.signed.record.seq,
                "; ".join(report.reasons),
            )
        return report

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def rank_by_audits(
    offers: list[Any], audits: AuditLog, published: dict[str, int] | None = None
) -> list[Any]:
    """Drop providers with a failed audit of our own; put those with failed audits published
    on-chain by others after the rest (unverified: anyone can publish one, so they are ranked
    down, not dropped); then cheapest first, and more passed audits first at one price."""
    records = {o.provider: audits.record(o.provider) for o in offers}
    reported = published or {}
    kept = [o for o in offers if records[o.provider].trusted]
    return sorted(
        kept,
        key=lambda o: (
            reported.get(o.provider, 0) > 0,
            o.prices.output_per_m,
            o.prices.input_per_m,
            -records[o.provider].passed,
        ),
    )


def case_from_response(
    channel: Any, body: dict[str, Any], prompt_ids: list[int], bill_json: dict[str, Any]
) -> AuditCase | None:
    """The audit case of one verified response, or None when it carries nothing to audit."""
    from tallystick.protocol import UsageBill

    bill = UsageBill.from_json(bill_json)
    asked = body.get("temperature")
    temperature = 1.0 if asked is None else float(asked)
    if not bill.proof and temperature != 0:
        return None  # without a proof only a greedy (temperature 0) record can be audited
    signed = bill.signed
    seed = body.get("seed")  # absent (an OpenAI client): the node chose it, as the record says
    return AuditCase(
        model=channel.model,
        provider=channel.provider,
        chain_id=channel.chain_id,
        escrow=channel.escrow,
        signed=signed,
        prompt_ids=list(prompt_ids),
        completion_ids=list(bill.completion_ids),
        proof=list(bill.proof),
        seed=seed if isinstance(seed, int) else signed.record.seed,
        temperature=temperature,
        top_p=float(body.get("top_p", 1.0)),
    )
