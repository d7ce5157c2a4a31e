"""The API fuzz tests reuse the node test kit (FakeEngine, in-memory chain)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "node"))
