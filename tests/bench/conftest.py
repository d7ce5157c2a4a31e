"""Bench smoke tests: each section in a minimal configuration, results to a temporary folder."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `bench` is a top-level folder, not an installed package
    sys.path.insert(0, str(ROOT))


@pytest.fixture(autouse=True)
def results_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Never overwrite the checked-in figures in bench/results/."""
    import bench._common

    out = tmp_path / "results"
    monkeypatch.setattr(bench._common, "RESULTS", out)
    return out


@pytest.fixture
def tiny_counter() -> Any:
    """A TokenCounter on the tiny byte-level tokenizer (no model download, no torch)."""
    from tallystick.node.engines import tiny_tokenizer_bundle
    from tallystick.protocol import TokenCounter

    return TokenCounter(tiny_tokenizer_bundle())
