"""Bench smoke tests: each section in a minimal configuration, results to a temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def results_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Never overwrite the checked-in figures in bench/results/."""
    import bench._common

    out = tmp_path / "results"
    monkeypatch.setattr(bench._common, "RESULTS", out)
    return out
