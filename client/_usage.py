"""What this wallet spent, from its store: every verified, countersigned request.

One aggregation for ``tallystick usage`` and ``tallystick dashboard``. A request's cost is
the one its bill line holds (what it added to the channel's cumulative cost, §3), so the
sums equal what the escrow pays. Amounts of different tokens are never added together:
``token`` is always one of the groups.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from ._store import Store

__all__ = ["SPEND_DIMENSIONS", "Spent", "spend", "spend_lines"]

SPEND_DIMENSIONS = ("model", "provider", "channel", "token", "day", "hour")


@dataclass(frozen=True)
class Spent:
    """One verified request as the spend views read it."""

    at: float
    channel: str
    model: str
    provider: str
    token: str
    prompt_tokens: int
    completion_tokens: int
    cost: int  # base units of ``token``

    def key(self, dimension: str) -> str:
        if dimension == "day":
            return _utc(self.at, "%Y-%m-%d")
        if dimension == "hour":
            return _utc(self.at, "%Y-%m-%dT%H:00Z")
        return str(getattr(self, dimension))


def spend_lines(store: Store, since: float = 0.0) -> list[Spent]:
    """Every verified request since ``since`` (unix seconds), oldest first."""
    found = []
    for info in store.channels():
        for line in store.bill(info.channel_id):
            if line.created_at >= since:
                found.append(
                    Spent(
                        line.created_at,
                        info.hex_id,
                        info.model,
                        info.provider,
                        info.token,
                        line.prompt_tokens,
                        line.completion_tokens,
                        line.cost,
                    )
                )
    return sorted(found, key=lambda s: (s.at, s.channel))


def spend(lines: list[Spent], by: tuple[str, ...]) -> list[dict[str, Any]]:
    """Requests, tokens and cost per group of ``by`` (``token`` added when missing)."""
    unknown = [d for d in by if d not in SPEND_DIMENSIONS]
    if unknown:
        raise ValueError(
            f"cannot group by {', '.join(unknown)}; choose from {', '.join(SPEND_DIMENSIONS)}"
        )
    dims = by if "token" in by else (*by, "token")
    sums: dict[tuple[str, ...], list[int]] = {}
    for line in lines:
        acc = sums.setdefault(tuple(line.key(d) for d in dims), [0, 0, 0, 0])
        acc[0] += 1
        acc[1] += line.prompt_tokens
        acc[2] += line.completion_tokens
        acc[3] += line.cost
    return [
        {
            **dict(zip(dims, group, strict=True)),
            "requests": acc[0],
            "prompt_tokens": acc[1],
            "completion_tokens": acc[2],
            "cost": acc[3],
        }
        for group, acc in sorted(sums.items())
    ]


def _utc(at: float, fmt: str) -> str:
    return datetime.datetime.fromtimestamp(at, tz=datetime.UTC).strftime(fmt)
