"""``GET /dashboard``: one self-contained page of what this node earns and how fast it serves.

``/dashboard`` is static HTML (no script or style from elsewhere: a provider may open it on
a machine without internet); it reads ``/dashboard/data?since=7d``, built here from the
ledger: earnings over time per model and token, channels with their deposits, claims and
disputes (unilateral closes and receipts the escrow skipped), tokens/s, TTFT and ITL.
Everything on it is already public on-chain or in ``/metrics``; nothing needs a key.
"""

from __future__ import annotations

import asyncio
import time
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request, Response
from tallystick.protocol import (
    ChannelState,
    ChannelStatus,
    TokenInfo,
    format_amount,
    parse_since,
    token_info,
)

from ._earnings import auto_bucket, earnings, performance
from ._errors import ApiError
from ._ledger import LedgerStore

__all__ = ["dashboard_data", "install_dashboard"]

_CLAIMS_SHOWN = 50


def install_dashboard(app: FastAPI) -> None:
    """Add ``GET /dashboard`` and ``GET /dashboard/data`` to the node's app."""
    app.get("/dashboard", include_in_schema=False)(_page)
    app.get("/dashboard/data", include_in_schema=False)(_data)


async def _page(request: Request) -> Response:
    html = resources.files("tallystick.node").joinpath("dashboard.html").read_text("utf-8")
    return Response(html, media_type="text/html; charset=utf-8")


async def _data(request: Request) -> Any:
    node = request.app.state.node
    text = request.query_params.get("since", "7d")
    try:
        since = parse_since(text)
    except ValueError as exc:
        raise ApiError(400, str(exc).replace("--since", "since"), param="since") from None
    tokens = _token_reader(node.chain)
    return await asyncio.to_thread(
        dashboard_data, node.ledger, tokens, since, node.provider, node.engine.model_name
    )


def _token_reader(chain: Any) -> Any:
    """symbol/decimals on-chain when the chain is web3 (a unit test's fake chain: base units)."""
    escrow = getattr(chain, "escrow", None)
    w3 = getattr(escrow, "w3", None)

    def read(address: str) -> TokenInfo:
        if w3 is not None:
            return token_info(w3, address)
        if int(address, 16) == 0:
            return TokenInfo(address, "ETH", 18)
        return TokenInfo(address, f"base units of {address}", 0)

    return read


def dashboard_data(
    ledger: LedgerStore, tokens: Any, since: float, provider: str, model: str
) -> dict[str, Any]:
    """The page's data: every amount as base units (string) and as text in token units."""
    now = time.time()
    bucket = auto_bucket(since, now)
    channels = {c.channel_id: c for c in ledger.channels()}
    rows = ledger.usage_since(since)
    infos: dict[str, TokenInfo] = {}

    def money(amount: int, token: str) -> dict[str, Any]:
        if token not in infos:
            infos[token] = tokens(token) if token != "unknown" else TokenInfo(token, "?", 0)
        info = infos[token]
        return {
            "base": str(amount),
            "value": amount / 10**info.decimals,
            "text": format_amount(amount, info),
            "symbol": info.symbol,
        }

    return {
        "provider": provider,
        "model": model,
        "since": since,
        "now": now,
        "bucketSeconds": bucket,
        "earnings": [
            {
                "start": e.start,
                "model": e.model,
                "token": e.token,
                **_counts(e),
                "amount": money(e.amount, e.token),
            }
            for e in earnings(rows, channels, bucket, since)
        ],
        "totals": [
            {"model": e.model, "token": e.token, **_counts(e), "amount": money(e.amount, e.token)}
            for e in earnings(rows, channels, None, since)
        ],
        "channels": [_channel(ledger, c, money) for c in channels.values()],
        "claims": [_claim(c, channels, money) for c in ledger.claims(_CLAIMS_SHOWN)],
        "disputes": _disputes(ledger, channels, now),
        "performance": [vars(p) for p in performance(rows, bucket, since)],
    }


def _counts(e: Any) -> dict[str, int]:
    return {"requests": e.requests, "inputTokens": e.input_tokens, "outputTokens": e.output_tokens}


def _channel(ledger: LedgerStore, c: ChannelState, money: Any) -> dict[str, Any]:
    rec = ledger.last_record(c.channel_id)
    rct = ledger.last_receipt(c.channel_id)
    served = rec.signed.record if rec else None
    signed = rct.signed.receipt if rct else None
    return {
        "channelId": "0x" + c.channel_id.hex(),
        "client": c.client,
        "status": ChannelStatus(int(c.status)).name.lower(),
        "token": c.token,
        "deposit": money(c.deposit, c.token),
        "paid": money(c.paid, c.token),
        "served": [served.input_tokens, served.output_tokens] if served else [0, 0],
        "countersigned": [signed.input_tokens, signed.output_tokens] if signed else [0, 0],
        "closesAt": c.closes_at or None,
    }


def _claim(row: Any, channels: dict[bytes, ChannelState], money: Any) -> dict[str, Any]:
    tokens = {channels[i.channel_id].token for i in row.items if i.channel_id in channels}
    token = next(iter(tokens)) if len(tokens) == 1 else None
    return {
        "id": row.claim_id,
        "tx": row.tx_hash,
        "status": row.status,
        "at": row.created_at,
        "receipts": len(row.items),
        "skipped": sum(1 for i in row.items if i.status == "skipped"),
        "gasUsed": row.gas_used,
        "amount": None if row.amount is None or token is None else money(row.amount, token),
        "error": row.error,
    }


def _disputes(
    ledger: LedgerStore, channels: dict[bytes, ChannelState], now: float
) -> list[dict[str, Any]]:
    """Unilateral closes under way (claim before the deadline) and receipts the escrow skipped."""
    found: list[dict[str, Any]] = [
        {
            "kind": "close requested",
            "channelId": "0x" + c.channel_id.hex(),
            "detail": f"the client asked to close; claim before {_iso(c.closes_at)}",
            "at": None,
        }
        for c in channels.values()
        if c.status == ChannelStatus.CLOSING
    ]
    for claim in ledger.claims(_CLAIMS_SHOWN):
        found.extend(
            {
                "kind": "receipt skipped",
                "channelId": "0x" + item.channel_id.hex(),
                "detail": f"claim {claim.claim_id}: {item.reason or 'skipped'}",
                "at": claim.created_at,
            }
            for item in claim.items
            if item.status == "skipped"
        )
    return found


def _iso(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
