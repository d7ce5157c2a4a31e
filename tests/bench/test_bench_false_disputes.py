"""The false-disputes section in a small configuration: honest generations of the real model,
through the real node on anvil, verified by the SDK, never disputed."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = [pytest.mark.model, pytest.mark.chain]


def test_honest_generations_raise_no_dispute(results_dir: Path) -> None:
    from bench import false_disputes

    # 2 per cell: T 0 and 1, plain and streaming, 1 and 4 concurrent streams (16 generations)
    result = false_disputes.run(false_disputes.Config(per_cell=2, max_tokens=24))
    assert result["generations"] == 16
    assert result["false_disputes"] == 0, result["disputes"]
    assert (results_dir / "false_disputes.json").exists()
