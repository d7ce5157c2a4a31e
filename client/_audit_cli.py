"""``tallystick audit``: check a completion's record against local reference weights (§10.4).

    tallystick audit CASE_OR_REPORT.json --weights FILE   re-check one case or published report
    tallystick audit --failed [--out DIR]                 this client's failed audits, as files

Exit code 0 when the audit passes, 1 when it fails, 2 when the weights do not match the record.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .cli import Settings, cli, err, out

_EXIT = {"pass": 0, "fail": 1, "unverifiable": 2}


@cli.command("audit")
@click.argument("evidence", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--weights", type=click.Path(exists=True), help="the listed weights file/folder")
@click.option("--failed", is_flag=True, help="list this client's failed audits")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="with --failed: write each report to DIR/<provider>-<seq>.json")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
@click.pass_obj
def audit_command(
    s: Settings,
    evidence: str | None,
    weights: str | None,
    failed: bool,
    out_dir: Path | None,
    as_json: bool,
) -> None:
    """Audit a completion (a case or a report JSON) against the listed weights."""
    with s.client(chain=False, wallet=False) as client:
        if failed:
            _list_failed(client, out_dir)
            return
        if evidence is None or weights is None:
            raise click.UsageError("give CASE_OR_REPORT.json and --weights (or --failed)")
        report = client.audit(_load(evidence), weights)
    if as_json:
        out.print_json(json.dumps(report.to_json()))
    else:
        _show(report)
    raise SystemExit(_EXIT[report.verdict])


def _load(path: str) -> dict[str, Any]:
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise click.UsageError(f"{path}: not a JSON file ({exc})") from exc
    if not isinstance(obj, dict):
        raise click.UsageError(f"{path}: not an audit case or report")
    return obj


def _show(report: Any) -> None:
    case, f = report.case, report.figures
    colour = {"pass": "green", "fail": "bold red"}.get(report.verdict, "yellow")
    out.print(
        f"[{colour}]{report.verdict}[/]: {case.model} by {case.provider}, channel "
        f"0x{case.signed.record.channel_id.hex()[:12]}… seq {case.signed.record.seq}, "
        f"{f.get('tokens', 0)} tokens",
        highlight=False,
    )
    if "max_proof_error" in f:
        out.print(
            f"  largest logit difference {f['max_proof_error']}, smallest margin "
            f"{f['min_margin']} (tolerance {f['tolerance']['proof']}), audit {f['audit_s']} s",
            highlight=False,
        )
    for reason in report.reasons:
        out.print(f"  - {reason}", highlight=False)


def _list_failed(client: Any, out_dir: Path | None) -> None:
    reports = client.audits.failures()
    if not reports:
        out.print("no failed audits")
        return
    for report in reports:
        _show(report)
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            r = report.case.signed.record
            path = out_dir / f"{report.case.provider}-{r.channel_id.hex()[:8]}-{r.seq}.json"
            path.write_text(json.dumps(report.to_json(), indent=1) + "\n")
            err.print(f"[dim]wrote {path}[/dim]")
