"""``tallystick demo`` step 6b: proof of the model (docs/protocol.md §10).

The client holds the listed weights and audits every request (fraction 1.0 for the demo; 5%
by default): the honest node's audits pass. The node is then restarted with the TEST-ONLY
flag ``--test-only-perturb-weights 0.01`` (weights with noise of 1% of each tensor's std,
still claiming the listed modelHash): the next request is billed as usual, and its audit
fails with a self-contained report; the client drops the provider from discovery.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from eth_utils import keccak
from tallystick.client import Tallystick

from ._client_steps import PROMPTS, ask, show_receipt
from ._processes import MODEL_NAME, DevnetError
from ._report import short

if TYPE_CHECKING:
    from ._demo import DemoRun

__all__ = ["audit_step"]

CHEAT_SIZE = "0.01"


def audit_step(run: DemoRun, command: list[str], client: Tallystick) -> None:
    """Audit the honest node's requests, then a perturbed node's; publish the failed report."""
    run.console.rule("[bold]6b · Proof of the model: audits against the listed weights")
    with run.console.status("auditing the requests (one prefill each, in the background)…"):
        reports = client.auditor.drain(timeout=600)
    for report in reports:
        _show(run, report)
    if not reports or not all(r.passed for r in reports):
        raise DevnetError("an audit of the honest node did not pass")
    run.console.print(
        f"\n[bold yellow]TEST ONLY:[/bold yellow] restarting the node with "
        f"--test-only-perturb-weights {CHEAT_SIZE} (perturbed weights, same modelHash claimed)"
    )
    _restart_node(run, command)
    prompt = PROMPTS[1]
    run.console.print(f"\n[bold cyan]client ›[/bold cyan] {prompt}")
    bill = ask(run, client, prompt, stream=False, seed=99)
    show_receipt(run, client, bill, prompt)
    with run.console.status("auditing…"):
        (report,) = client.auditor.drain(timeout=600)
    _show(run, report)
    if report.verdict != "fail":
        raise DevnetError("the audit of the perturbed node did not fail")
    path = run.workdir.parent / f"tallystick-demo-failed-audit-{run.provider.address[:10]}.json"
    path.write_text(json.dumps(report.to_json(), indent=1) + "\n")
    raw = path.read_bytes()
    tx = client.publish_audit(report, uri=path.as_uri(), report_bytes=raw)
    run.console.print(
        f"published on-chain: ProviderRegistry.reportAudit (event AuditReported, report hash "
        f"{short('0x' + keccak(raw).hex())}): {tx.gas_used:,} gas"
    )
    run.events["audit_report_gas"] = tx.gas_used
    ranked = [o.provider for o in client.providers(MODEL_NAME)]
    run.console.print(
        f"failed-audit report (re-check: tallystick audit {path} --weights {run.model}); "
        f"discovery now offers {len(ranked)} provider(s) for {MODEL_NAME}: the cheat is "
        f"{'gone' if run.provider.address not in ranked else 'STILL LISTED'}"
    )
    if run.provider.address in ranked:
        raise DevnetError("the provider with a failed audit is still ranked in discovery")
    if run.options.keep:
        # --keep leaves the node running for the README's quickstarts: with the listed weights,
        # not the TEST-ONLY perturbed ones (they answered "L'Étoile, la Marseur, …" to France).
        run.console.print("--keep: restarting the node with the listed weights (honest again)")
        _restart_node(run, command, cheat=False)


def _show(run: Any, report: Any) -> None:
    f = report.figures
    mark = "[green]pass[/green]" if report.passed else "[bold red]FAIL[/bold red]"
    run.console.print(
        f"  audit seq {report.case.signed.record.seq}: {mark}  {f.get('tokens')} tokens, "
        f"largest logit difference {f.get('max_proof_error')}, smallest margin "
        f"{f.get('min_margin')}, {f.get('audit_s')} s"
        + ("" if report.passed else f" — {'; '.join(report.reasons)}")
    )


def _restart_node(run: DemoRun, command: list[str], *, cheat: bool = True) -> None:
    from ._demo import serve_node

    run.procs.stop(next(p for p in run.procs.procs if p.name == "node"))
    serve_node(run, command, extra=["--test-only-perturb-weights", CHEAT_SIZE] if cheat else [])
