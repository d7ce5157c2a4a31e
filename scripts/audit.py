"""Runs slither over contracts/src (Hardhat 3's build-info) and checks every finding is triaged.

Run by `make audit` (scripts/audit.sh) with the slither venv's Python. A finding is keyed by
(detector, element): the element is the function, variable or pragma slither reports first, so
keys survive edits that move lines. Each verdict is explained in docs/security.md.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SLITHER = Path(sys.executable).parent / "slither"
# Dependencies, tests and mocks are not what we deploy.
FILTER = "node_modules|contracts/test|contracts/src/mocks"

# (detector, element name) -> verdict. "false positive" and "by design" findings are kept here
# (and explained in docs/security.md) so that a new finding fails the audit.
TRIAGED = {
    ("msg-value-in-nonpayable", "_checkValue"): "false positive: called from payable open/topUp",
    ("uninitialized-state", "_channels"): "false positive: written through a storage pointer",
    ("unused-return", "_checkClientSignature"): "by design: the error code is checked",
    ("unused-return", "closeCooperative"): "by design: the error code is checked",
    ("timestamp", "_checkClientSignature"): "by design: a key's grace is a challenge period",
    ("timestamp", "finalize"): "by design: the challenge period is hours",
    ("timestamp", "_tryClaim"): "by design: the challenge period is hours",
    ("assembly", "_revertWith"): "by design: re-throws an encoded custom error",
    ("pragma", "0.8.30"): "by design: contracts pinned, interfaces ^0.8.28",
    ("low-level-calls", "_send"): "by design: checked ETH send after effects, nonReentrant",
    ("naming-convention", "RECEIPT_TYPEHASH"): "by design: the EIP-712 convention",
}


def current_build_infos(into: Path) -> Path:
    """Copy the build-info of the artifacts in contracts/src (not older builds Hardhat keeps)."""
    ids = {
        json.loads(p.read_text())["buildInfoId"]
        for p in (ROOT / "artifacts" / "contracts" / "src").rglob("*.json")
        if not p.name.endswith(".dbg.json") and "buildInfoId" in p.read_text()[:100_000]
    }
    build_info = into / "build-info"
    build_info.mkdir(parents=True)
    for build_id in ids:
        for suffix in (".json", ".output.json"):
            shutil.copy(ROOT / "artifacts" / "build-info" / f"{build_id}{suffix}", build_info)
    return into


def findings() -> list[dict]:
    with tempfile.TemporaryDirectory(dir=ROOT / ".tools") as tmp:
        artifacts = current_build_infos(Path(tmp) / "artifacts")
        out = Path(tmp) / "slither.json"
        cmd = [str(SLITHER), ".", "--hardhat-ignore-compile", "--filter-paths", FILTER]
        cmd += ["--hardhat-artifacts-directory", str(artifacts)]
        cmd += ["--json", str(out), "--fail-none"]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
        if not out.exists():
            sys.exit(f"slither failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
        report = json.loads(out.read_text())
    if not report.get("success"):
        sys.exit(f"slither failed: {report.get('error')}")
    return list(report["results"].get("detectors", []))


def key(result: dict) -> tuple[str, str]:
    elements = result.get("elements") or [{}]
    return result["check"], str(elements[0].get("name", ""))


def main() -> int:
    results = findings()
    untriaged = []
    print(f"{'detector':<26}{'impact':<15}{'element':<24}verdict")
    for r in results:
        verdict = TRIAGED.get(key(r))
        if verdict is None:
            untriaged.append(r)
        print(f"{r['check']:<26}{r['impact']:<15}{key(r)[1]:<24}{verdict or 'UNTRIAGED'}")
    stale = set(TRIAGED) - {key(r) for r in results}
    for k in sorted(stale):
        print(f"note: triaged finding no longer reported: {k}")
    if untriaged:
        print(f"\n{len(untriaged)} untriaged finding(s):")
        for r in untriaged:
            print(r["description"])
        return 1
    print(f"\n{len(results)} finding(s), all triaged (docs/security.md, 'Static analysis')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
