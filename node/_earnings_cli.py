"""``tallystick-node settle``, ``withdraw``, ``earnings``: what this provider is paid.

``settle`` claims every channel's latest countersigned receipt now (``claimMany``), ``withdraw``
moves the escrow's balance to an address, ``earnings`` reads the ledger: per model and token.
"""

from __future__ import annotations

import asyncio
from typing import Any

import click
from tallystick.protocol import (
    format_amount,
    token_info,
)

from ._cli_base import (
    _account,
    _bindings,
    _chain_options,
    _check_ledger_owner,
    _known_tokens,
    _one_line_errors,
    _resolve_token,
    _settings,
    main,
)
from ._errors import ConfigError
from ._settings import Settings


@main.command()
@_chain_options
@click.option(
    "--token",
    default="ETH",
    show_default=True,
    help="ETH, a 0x address, or the symbol of a token you list (USDC).",
)
@click.option("--to", "to", help="Recipient (default: the provider).")
@_one_line_errors
def withdraw(token: str, to: str | None, **cli: Any) -> None:
    """Pull claimed earnings to your wallet."""
    settings = _settings(cli)
    account, registry, escrow = _bindings(settings)
    address = _resolve_token(token, escrow.w3, _known_tokens(settings, registry, account.address))
    tx = escrow.withdraw(account, address, to)
    info = token_info(escrow.w3, address)
    where = "" if info.is_eth else f" ({address})"
    click.echo(f"withdrew {format_amount(tx.value, info)}{where} (tx 0x{tx.tx_hash.hex()})")


@main.command()
@_chain_options
@click.option(
    "--settle-max-gas-per-tx",
    type=int,
    help="Gas budget of one claimMany; more receipts go in several transactions.",
)
@_one_line_errors
def settle(**cli: Any) -> None:
    """Claim every countersigned receipt now (claimMany batches that fit in a block)."""
    settings = _settings(cli)
    account = _account(settings)
    _check_ledger_owner(settings, account.address)
    outcomes = asyncio.run(_settle(settings, account))
    if not outcomes:
        click.echo("nothing to claim")
        return
    _, _, escrow = _bindings(settings)
    for outcome in outcomes:
        by_token: dict[str, int] = {}
        for cid, amount in outcome.claimed.items():
            token = escrow.get_channel(cid).token
            by_token[token] = by_token.get(token, 0) + amount
        amounts = " + ".join(
            format_amount(v, token_info(escrow.w3, t)) for t, v in sorted(by_token.items())
        )
        click.echo(
            f"claimed {amounts or 'nothing'} over {len(outcome.claimed)} channel(s), "
            f"{len(outcome.skipped)} skipped (tx {outcome.tx_hash}, gas {outcome.gas_used})"
        )
        for cid, reason in outcome.skipped.items():
            click.echo(f"  skipped 0x{cid.hex()}: {reason}")


@main.command()
@_chain_options
@click.option(
    "--since",
    default="30d",
    show_default=True,
    help="Window start: a duration (30m, 24h, 7d, 2w) or an ISO date/time (UTC unless it says).",
)
@click.option(
    "--by",
    type=click.Choice(["total", "hour", "day", "week"]),
    default="total",
    show_default=True,
    help="One row per model and token, or also per hour/day/week.",
)
@click.option("--json", "as_json", is_flag=True, help="JSON (amounts also in base units).")
@click.option("--csv", "as_csv", is_flag=True, help="CSV (amounts also in base units).")
@_one_line_errors
def earnings(since: str, by: str, as_json: bool, as_csv: bool, **cli: Any) -> None:
    """What this node earned from its ledger, per model and payment token."""
    from tallystick.protocol import parse_since

    from ._earnings_report import earnings_report
    from ._escrow import connect_node
    from ._ledger import open_ledger

    if as_json and as_csv:
        raise ConfigError("give at most one of --json and --csv")
    start = parse_since(since)
    settings = _settings(cli)
    w3 = connect_node(settings)
    ledger = open_ledger(settings.ledger_location)
    try:
        fmt = "json" if as_json else "csv" if as_csv else "table"
        text = earnings_report(ledger, lambda t: token_info(w3, t), start, by, fmt)
    finally:
        ledger.close()
    click.echo(text, nl=not text.endswith("\n"))


async def _settle(settings: Settings, account: Any) -> Any:
    from ._chain import ChannelCache
    from ._escrow import EscrowChain
    from ._ledger import open_ledger
    from ._metrics import NodeMetrics
    from ._settlement import SettlementWorker

    chain = await EscrowChain.connect(settings, account)
    ledger = open_ledger(settings.ledger_location)
    try:
        cache = ChannelCache(chain, ledger, 0)
        worker = SettlementWorker(
            chain=chain, ledger=ledger, cache=cache, metrics=NodeMetrics(), settings=settings
        )
        return await worker.settle(force=True)
    finally:
        ledger.close()
