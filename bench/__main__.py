"""``python -m bench`` (``make bench``): every section in one run, then one table of targets.

    python -m bench [--only gas_per_request,growth,serving,protocol_costs,gateway,gas,
                            false_disputes,replicas,fidelity] [--quick]

``--quick`` runs each section in a minimal configuration (seconds, except the model loads).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from . import (
    false_disputes,
    fidelity,
    gas_per_request,
    gateway,
    growth,
    protocol_costs,
    replicas,
    serving,
)
from ._common import Target, console, show_targets

SECTIONS = (
    "gas",
    "gas_per_request",
    "growth",
    "serving",
    "protocol_costs",
    "gateway",
    "false_disputes",
    "replicas",
    "fidelity",
)


# The sections that take a Config (None: the full configuration).
RUNNERS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "gas_per_request": gas_per_request.run,
    "growth": growth.run,
    "serving": serving.run,
    "gateway": gateway.run,
    "false_disputes": false_disputes.run,
    "replicas": replicas.run,
    "fidelity": fidelity.run,
}


def _quick() -> dict[str, Any]:
    return {
        "gas_per_request": gas_per_request.Config(batches=(1, 2), per_receipt=(1, 50)),
        "growth": growth.Config(channels=(5, 10), prompt_lengths=(256,), verify_n=5),
        "serving": serving.Config.for_this_machine(
            levels=(1, 2), llama_levels=(1, 2), max_tokens=8, min_requests=1, prefix=False
        ),
        "gateway": gateway.Config(levels=(1, 2), max_tokens=8, min_requests=1),
        "false_disputes": false_disputes.Config(per_cell=2, max_tokens=16),
        "replicas": replicas.Config(
            streams=2, max_tokens=8, min_requests=2, ledger_requests=50, channels=10
        ),
        "fidelity": fidelity.QUICK,
    }


def _gas_report() -> dict[str, Any]:
    # bench/gas.py is the contracts engineer's per-function report; it prints its own table.
    from . import gas

    console.print("[bold]Per-function gas[/] (bench/gas.py)")
    return {"exit_code": gas.main()}


def run(only: tuple[str, ...], quick: bool) -> list[Target]:
    configs = _quick() if quick else {}
    figures: dict[str, Any] = {}
    started = time.monotonic()
    for name in only:
        console.rule(f"[bold]{name}")
        section_start = time.monotonic()
        if name == "gas":
            figures[name] = _gas_report()
        elif name == "protocol_costs":  # its TTFT figure comes from the serving section
            figures[name] = protocol_costs.run(figures.get("serving"))
        else:
            figures[name] = RUNNERS[name](configs.get(name))
        console.print(f"[dim]{name}: {time.monotonic() - section_start:.0f} s[/]")
    targets = [
        Target(**{k: t[k] for k in ("name", "measured", "limit", "unit")},
               higher_is_better=t["op"] == ">=")
        for f in figures.values() for t in f.get("targets", [])
    ]  # fmt: skip
    console.rule("[bold]Summary")
    show_targets("All targets", targets)
    console.print(f"make bench: {time.monotonic() - started:.0f} s in all")
    return targets


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--quick", action="store_true", help="minimal configurations")
    args = parser.parse_args()
    only = tuple(s for s in args.only.split(",") if s)
    unknown = [s for s in only if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    run(only, args.quick)
    return 0  # benchmarks print figures; a MISS is a finding, not a failure of the run


if __name__ == "__main__":
    sys.exit(main())
