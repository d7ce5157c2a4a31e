"""The node's log lines carry ISO 8601 UTC timestamps, in both formats."""

from __future__ import annotations

import json
import logging
import re

import pytest
from tallystick.node._logging import configure_logging

ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


@pytest.mark.parametrize("fmt", ["kv", "json"])
def test_log_lines_have_iso_timestamps(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", fmt)
    try:
        logging.getLogger("tallystick.node").info("claimed %s", "0.0086 USDC")
    finally:
        logging.getLogger().handlers[:] = []
    line = capsys.readouterr().err.strip().splitlines()[-1]
    ts = json.loads(line)["ts"] if fmt == "json" else line.split()[0].removeprefix("ts=")
    assert re.fullmatch(ISO, ts), line
    assert "claimed 0.0086 USDC" in line
