"""``tallystick-node earnings``: what the ledger says this node earned, per model and token."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Table
from tallystick.protocol import TokenInfo, format_amount

from ._earnings import Earning, earnings
from ._ledger import LedgerStore

__all__ = ["earnings_report"]

_BY = {"total": None, "hour": 3600, "day": 86400, "week": 7 * 86400}


def earnings_report(
    ledger: LedgerStore,
    tokens: Callable[[str], TokenInfo],
    since: float,
    by: str = "total",
    fmt: str = "table",
) -> str:
    """The report as text: a table, CSV or JSON (amounts in base units and in token units)."""
    channels = {c.channel_id: c for c in ledger.channels()}
    rows = earnings(ledger.usage_since(since), channels, _BY[by], since)
    records = [_record(e, tokens) for e in rows]
    if fmt == "json":
        return json.dumps({"since": _iso(since), "by": by, "earnings": records}, indent=2)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(_record_fields()), lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        return out.getvalue()
    return _table(records, since, by)


def _record_fields() -> tuple[str, ...]:
    return (
        "start",
        "model",
        "token",
        "symbol",
        "requests",
        "input_tokens",
        "output_tokens",
        "amount",
        "amount_base_units",
    )


def _record(e: Earning, tokens: Callable[[str], TokenInfo]) -> dict[str, Any]:
    info = tokens(e.token) if e.token != "unknown" else TokenInfo(e.token, "?", 0)
    return {
        "start": _iso(e.start),
        "model": e.model,
        "token": e.token,
        "symbol": info.symbol,
        "requests": e.requests,
        "input_tokens": e.input_tokens,
        "output_tokens": e.output_tokens,
        "amount": format_amount(e.amount, info),
        "amount_base_units": str(e.amount),
    }


def _table(records: list[dict[str, Any]], since: float, by: str) -> str:
    console = Console(record=True, width=1000, file=io.StringIO())  # ids whole
    if not records:
        console.print(f"nothing served since {_iso(since)}")
        return console.export_text()
    table = Table(title=f"earned since {_iso(since)} (served, at channel prices)")
    if by != "total":
        table.add_column(by)
    for col in ("model", "token", "requests", "input tokens", "output tokens", "earned"):
        table.add_column(col, justify="right" if col not in ("model", "token") else "left")
    for r in records:
        token = r["symbol"] if r["symbol"] == "ETH" else f"{r['symbol']} {r['token']}"
        cells = [r["model"], token, str(r["requests"]), str(r["input_tokens"])]
        cells += [str(r["output_tokens"]), r["amount"]]
        table.add_row(*([r["start"]] if by != "total" else []), *cells)
    console.print(table)
    return console.export_text()


def _iso(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
