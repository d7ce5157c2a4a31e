"""``tallystick-node status``: what the chain and the ledger say about this provider."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from tallystick.protocol import (
    ChannelStatus,
    Receipt,
    UsageRecord,
    cost_of,
    format_amount,
    token_info,
)

from ._ledger import open_ledger
from ._settings import Settings

__all__ = ["show_status"]


def _show(console: Console, table: Table) -> None:
    """Print ``table`` whole: wider than the terminal rather than cut (ids are copied from it)."""
    from rich.measure import Measurement

    needed = Measurement.get(console, console.options.update(max_width=100_000), table).maximum
    width = console.width  # print() clamps its width= to the console's: widen the console
    console.width = max(width, needed)
    try:
        console.print(table)
    finally:
        console.width = width


def show_status(
    settings: Settings, provider: str, registry: Any, escrow: Any, as_json: bool = False
) -> None:
    """Print registration, listings, channels (served/countersigned/claimed) and earnings."""
    if as_json:
        import json

        print(json.dumps(status_json(settings, provider, registry, escrow), indent=2))
        return
    console = Console()
    info = registry.get_provider(provider)
    console.print(
        f"provider {provider}: "
        + (f"registered at {info.endpoint}" if info.registered else "NOT registered"),
        soft_wrap=True,  # one line, whatever the terminal width: scripts grep it
    )
    listings = Table(title="listings")
    for col in ("model", "input/M", "output/M", "token", "context", "active"):
        listings.add_column(col)
    tokens = set()
    for listing in registry.listings_of(provider):
        tokens.add(listing.token)
        info = token_info(registry.w3, listing.token)
        listings.add_row(
            listing.name,
            format_amount(listing.input_price_per_m, info),
            format_amount(listing.output_price_per_m, info),
            info.symbol if info.is_eth else f"{info.symbol} {listing.token}",
            str(listing.context_length),
            "yes" if listing.active else "no",
        )
    _show(console, listings)
    unclaimed = _channels(console, settings, escrow, tokens)
    earnings = Table(title="earnings")
    for col in ("token", "claimed (withdrawable)", "countersigned, unclaimed"):
        earnings.add_column(col)
    for token in sorted(tokens):
        info = token_info(registry.w3, token)
        earnings.add_row(
            info.symbol if info.is_eth else f"{info.symbol} {token}",
            format_amount(escrow.earnings(provider, token), info),
            format_amount(unclaimed.get(token, 0), info),
        )
    _show(console, earnings)


def _channels(
    console: Console, settings: Settings, escrow: Any, tokens: set[str]
) -> dict[str, int]:
    table = Table(title="channels")
    for col in (
        "channel",
        "status",
        "served in/out",
        "countersigned in/out",
        "claimed in/out",
        "deposit",
        "paid",
    ):
        table.add_column(col)
    unclaimed: dict[str, int] = {}
    for channel_id, state, served, signed in _ledger_channels(settings, escrow):
        tokens.add(state.token)
        if signed and int(state.status) in (ChannelStatus.OPEN, ChannelStatus.CLOSING):
            due = (
                min(
                    cost_of(signed.input_tokens, signed.output_tokens, state.prices),
                    state.deposit,
                )
                - state.paid
            )
            unclaimed[state.token] = unclaimed.get(state.token, 0) + max(due, 0)
        table.add_row(
            "0x" + channel_id.hex(),
            ChannelStatus(int(state.status)).name.lower(),
            f"{served.input_tokens}/{served.output_tokens}" if served else "0/0",
            f"{signed.input_tokens}/{signed.output_tokens}" if signed else "0/0",
            f"{state.claimed_input}/{state.claimed_output}",
            format_amount(state.deposit, token_info(escrow.w3, state.token)),
            format_amount(state.paid, token_info(escrow.w3, state.token)),
        )
    _show(console, table)
    return unclaimed


def status_json(settings: Settings, provider: str, registry: Any, escrow: Any) -> dict[str, Any]:
    """The same facts as the tables, for scripts: amounts as decimal strings of base units."""
    info = registry.get_provider(provider)
    listings = registry.listings_of(provider)
    tokens = {listing.token for listing in listings}
    channels = []
    for channel_id, state, served, signed in _ledger_channels(settings, escrow):
        tokens.add(state.token)
        channels.append(
            {
                "channelId": "0x" + channel_id.hex(),
                "status": ChannelStatus(int(state.status)).name.lower(),
                "token": state.token,
                "deposit": str(state.deposit),
                "paid": str(state.paid),
                "served": [served.input_tokens, served.output_tokens] if served else [0, 0],
                "countersigned": [signed.input_tokens, signed.output_tokens] if signed else [0, 0],
                "claimed": [state.claimed_input, state.claimed_output],
            }
        )
    return {
        "provider": provider,
        "registered": bool(info.registered),
        "endpoint": info.endpoint if info.registered else None,
        "listings": [
            {
                "model": listing.name,
                "inputPerMillion": str(listing.input_price_per_m),
                "outputPerMillion": str(listing.output_price_per_m),
                "token": listing.token,
                "symbol": token_info(registry.w3, listing.token).symbol,
                "contextLength": listing.context_length,
                "active": bool(listing.active),
            }
            for listing in listings
        ],
        "channels": channels,
        "earnings": {
            token: {
                "symbol": token_info(registry.w3, token).symbol,
                "withdrawable": str(escrow.earnings(provider, token)),
            }
            for token in sorted(tokens)
        },
    }


def _ledger_channels(
    settings: Settings, escrow: Any
) -> list[tuple[bytes, Any, UsageRecord | None, Receipt | None]]:
    """Each channel the ledger knows: its state on chain, the last record served and the
    last receipt countersigned (None before the first)."""
    ledger = open_ledger(settings.ledger_location)
    try:
        rows = []
        for cached in ledger.channels():
            record = ledger.last_record(cached.channel_id)
            receipt = ledger.last_receipt(cached.channel_id)
            rows.append(
                (
                    cached.channel_id,
                    escrow.get_channel(cached.channel_id),
                    record.signed.record if record else None,
                    receipt.signed.receipt if receipt else None,
                )
            )
        return rows
    finally:
        ledger.close()
