"""``--since`` as both CLIs read it: a duration back from now, or an ISO date/time."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

__all__ = ["parse_since"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: float | None = None) -> float:
    """``7d``, ``24h``, ``30m``, ``2w``, or an ISO date/time (UTC unless it says) → unix seconds.

    ``ValueError`` with the accepted forms for anything else.
    """
    now = time.time() if now is None else now
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text.lower())
    if found:
        return now - float(found[1]) * _UNITS[found[2]]
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"--since {text!r}: give a duration (30m, 24h, 7d, 2w) or an ISO date "
            "(2026-11-27, 2026-11-27T18:00)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()
