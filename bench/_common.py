"""What every bench section shares: paths, targets, output, percentiles.

Nothing here measures anything; it prints and saves what the sections measured. The chain,
the market and the processes come from ``tallystick.devnet`` through ``_setup.py``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from tallystick.devnet import MODEL_FILE, MODEL_NAME

__all__ = [
    "MODEL_FILE",
    "MODEL_GGUF",
    "MODEL_NAME",
    "RESULTS",
    "ROOT",
    "BenchError",
    "Target",
    "console",
    "percentile",
    "rss_bytes",
    "save",
    "send_tx",
    "show_targets",
    "table",
]

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
MODEL_GGUF = ROOT / ".models" / MODEL_NAME / MODEL_FILE

# Wide enough for the tables when the output is a file or a CI log (no terminal width).
console = Console(highlight=False, width=None if os.isatty(1) else 120)


class BenchError(Exception):
    """The benchmark itself could not run (a tool missing, a server that did not start)."""


# --- output ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A promised figure: ``measured`` must be ``>=`` (or ``<=``) ``limit``."""

    name: str
    measured: float | None
    limit: float
    higher_is_better: bool
    unit: str = ""

    @property
    def passed(self) -> bool:
        if self.measured is None or math.isnan(self.measured):
            return False
        if self.higher_is_better:
            return self.measured >= self.limit
        return self.measured <= self.limit

    @property
    def margin(self) -> str:
        """How far from the limit, as a ratio (``1.3x`` the limit / ``0.8x`` of it)."""
        if self.measured is None or math.isnan(self.measured) or self.limit == 0:
            return "n/a"
        return f"{self.measured / self.limit:.2f}x of limit"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "measured": self.measured,
            "limit": self.limit,
            "op": ">=" if self.higher_is_better else "<=",
            "unit": self.unit,
            "pass": self.passed,
        }


def _fmt(value: float | None, unit: str) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    if unit == "x":
        return f"{value:,.2f}x"
    return f"{value:,.3g} {unit}".strip() if abs(value) < 100 else f"{value:,.0f} {unit}".strip()


def show_targets(title: str, targets: Sequence[Target]) -> None:
    """One table: each target with its measured value and PASS/MISS."""
    rows = []
    for t in targets:
        op = ">=" if t.higher_is_better else "<="
        verdict = "[green]PASS[/]" if t.passed else "[red]MISS[/]"
        rows.append([t.name, _fmt(t.measured, t.unit), f"{op} {_fmt(t.limit, t.unit)}", verdict])
    console.print(table(title, ["target", "measured", "limit", "result"], rows))


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    out = Table(title=title, title_justify="left")
    for i, name in enumerate(columns):
        out.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        out.add_row(*(str(c) for c in row))
    return out


def save(name: str, data: dict[str, Any]) -> Path:
    """Write ``bench/results/<name>.json`` (the checked-in latest figures)."""
    # RESULTS is read at call time so tests can point it at a temporary folder.
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    stamped = {"generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **data}
    path.write_text(json.dumps(stamped, indent=2, default=_plain) + "\n")
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    console.print(f"[dim]wrote {shown}[/]")
    return path


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, float) and math.isnan(value):
        return None
    raise TypeError(f"cannot serialise {type(value).__name__}")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of ``pid`` (default: this process), from /proc."""
    path = Path(f"/proc/{pid or os.getpid()}/statm")
    try:
        pages = int(path.read_text().split()[1])
    except (OSError, IndexError, ValueError) as exc:
        raise BenchError(f"cannot read the RSS of pid {pid}: {exc}") from exc
    return pages * os.sysconf("SC_PAGE_SIZE")


# --- chain ----------------------------------------------------------------------------


def send_tx(w3: Any, account: Any, fn: Any) -> int:
    """Sign ``fn`` locally, send it, wait; its ``gasUsed`` (``BenchError`` if it reverted)."""
    tx = fn.build_transaction(
        {"from": account.address, "nonce": w3.eth.get_transaction_count(account.address)}
    )
    tx_hash = w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction)
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60, poll_latency=0.01)
    if receipt["status"] != 1:
        raise BenchError(f"transaction {tx_hash.hex()} reverted")
    return int(receipt["gasUsed"])
