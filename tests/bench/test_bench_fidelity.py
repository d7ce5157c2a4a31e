"""The fidelity bench's honest section through the real node path, in a minimal configuration:
a real node process with the SmolLM2 weights, SDK clients auditing every bill, 2 requests at
once, streamed and plain, temperature 0 and 0.7; all audited, none failed."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = [pytest.mark.chain, pytest.mark.model]


def test_honest_audits_through_a_real_node_all_pass(model_dir: Path, model_file: str) -> None:
    from tallystick.client import Reference

    from bench._fidelity_node import NodeRun, honest_node

    weights = model_dir / model_file
    run = NodeRun(per_cell=((2, 2),), threads=(1,), temperatures=(0.0, 0.7), max_tokens=8)
    lines: list[str] = []
    out = honest_node(weights, run, Reference.load(weights, threads=1), lines.append)
    assert (out["generations"], out["false_positives"], out["unverifiable"]) == (8, 0, 0)
    assert out["failures"] == []
    assert sorted(out["cells"]) == [
        f"threads1_batch2_temp{t}_{mode}" for t in (0.0, 0.7) for mode in ("plain", "stream")
    ]
    assert out["tokens"] > 0 and out["max_proof_error"] <= 0.06
    assert any("0 not passed of 2" in line for line in lines)
