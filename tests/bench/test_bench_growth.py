"""Smoke test: growth with a handful of channels on anvil through the real node app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.chain


def test_every_channel_is_served_and_claimed_in_one_pass(
    tiny_counter: Any, results_dir: Path
) -> None:
    from bench import growth

    result = growth.run(
        growth.Config(channels=(2, 4), prompt_lengths=(40, 80), verify_n=2), counter=tiny_counter
    )
    stages = result["channels"]
    assert [s["channels"] for s in stages] == [2, 4]
    assert all(s["settle_gas"] > 21_000 and s["fits_30m_block"] for s in stages)
    assert stages[1]["settle_gas"] > stages[0]["settle_gas"]  # more receipts, more gas
    lengths = [v["prompt_tokens"] for v in result["verification"]]
    assert lengths[0] <= 40 < lengths[1] <= 80
    assert (results_dir / "growth.json").exists()
