"""``tallystick channel``: open, session-key, topup, close, finalize, list.

Amounts are read as whole tokens with their symbol or as base units (``parse_amount``) and
printed in the token's own units.
"""

from __future__ import annotations

import json
from typing import Any

import click
from rich.table import Table
from tallystick.protocol import TokenInfo, parse_amount

from ._disputes import utc
from .cli import Settings, _say, _show, cli, out

_AMOUNT_HELP = "whole tokens with the symbol (1.5USDC, '0.01 ETH') or base units (digits only)"


@cli.group()
def channel() -> None:
    """Open, top up, close and list payment channels."""


@channel.command("open")
@click.option("--model", required=True)
@click.option("--deposit", required=True, help=_AMOUNT_HELP)
@click.option("--provider", help="provider address (default: the cheapest)")
@click.option("--session-key", is_flag=True, help="sign requests with a per-channel key")
@click.option(
    "--max-input-price", type=int, help="only offers at most this per million input tokens"
)
@click.option(
    "--max-output-price", type=int, help="only offers at most this per million output tokens"
)
@click.pass_obj
def channel_open(
    s: Settings,
    model: str,
    deposit: str,
    provider: str | None,
    session_key: bool,
    max_input_price: int | None,
    max_output_price: int | None,
) -> None:
    """Escrow a deposit with a provider for one model, at the prices it lists now.

    Prices are in base units of the listing's token per million tokens. The open is refused,
    and nothing deposited, if the provider raises its price above the listing found here (and
    checked against its node) before the transaction is mined; the prices printed are the ones
    the escrow snapshotted for the channel.
    """
    spec = _amount(deposit)
    with s.client() as client:
        from ._discovery import choose_offer

        offer = choose_offer(
            client.chain,
            model,
            provider,
            max_input_price=max_input_price,
            max_output_price=max_output_price,
        )
        base = _base_units(spec, s.token(offer.token), "--deposit")
        info = client.channels.open(
            model,
            base,
            offer.provider,
            session_key=session_key,
            max_input_price=max_input_price,
            max_output_price=max_output_price,
        )
    _say(
        f"opened channel {info.hex_id} with {info.provider} for {info.model}: "
        f"deposit {s.money(info.deposit, info.token)}, prices "
        f"{s.prices(info.prices, info.token)}"
    )


@channel.command("session-key")
@click.argument("channel_id")
@click.pass_obj
def channel_session_key(s: Settings, channel_id: str) -> None:
    """Authorise a fresh session key for an open channel (chat then needs no --key)."""
    with s.client() as client:
        address = client.channels.authorize_session_key(channel_id)
    out.print(f"channel {channel_id}: session key {address} (kept in {s.store})")


@channel.command("topup")
@click.argument("channel_id")
@click.option("--amount", required=True, help=_AMOUNT_HELP)
@click.pass_obj
def channel_topup(s: Settings, channel_id: str, amount: str) -> None:
    """Add to a channel's deposit."""
    spec = _amount(amount)
    with s.client() as client:
        token = client.channel(channel_id).token
        info = client.channels.top_up(channel_id, _base_units(spec, s.token(token), "--amount"))
    _say(f"channel {info.hex_id}: deposit now {s.money(info.deposit, info.token)}")


@channel.command("close")
@click.argument("channel_id")
@click.option("--unilateral", is_flag=True, help="requestClose without the provider")
@click.pass_obj
def channel_close(s: Settings, channel_id: str, unilateral: bool) -> None:
    """Close a channel: cooperatively (immediate) or unilaterally (after the challenge period)."""
    with s.client() as client:
        token = client.channel(channel_id).token
        if unilateral:
            closes_at = client.channels.request_close(channel_id)
            b = client.channels.balance(channel_id)
            _say(
                f"close requested: the challenge period ends at {utc(closes_at)}. Until then the "
                "node serves nothing more on this channel (402 channel_closing) and its "
                f"settlement worker may claim what you countersigned ({s.money(b.spent, token)} of "
                f"the deposit {s.money(b.deposit, token)}). Run `tallystick channel finalize "
                f"{channel_id}` after {utc(closes_at)} to get back the rest "
                f"({s.money(b.refundable, token)} now)."
            )
            return
        closed = client.channels.close_auto(channel_id)
    if isinstance(closed, int):
        out.print(
            "the node would not countersign the close of this unused channel, so a unilateral "
            f"close was requested; run `tallystick channel finalize {channel_id}` after "
            f"{utc(closed)} for the full refund"
        )
        return
    _say_closed(s, "closed", closed, token)


@channel.command("finalize")
@click.argument("channel_id")
@click.pass_obj
def channel_finalize(s: Settings, channel_id: str) -> None:
    """Finish a unilateral close once the challenge period is over."""
    with s.client() as client:
        token = client.channel(channel_id).token
        closed = client.channels.finalize(channel_id)
    _say_closed(s, "finalized", closed, token)


@channel.command("list")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per channel (base units)")
@click.pass_obj
def channel_list(s: Settings, as_json: bool) -> None:
    """Your channels with their spend and what is refundable."""
    with s.client() as client:
        table = Table("id", "provider", "model", "deposit", "spent", "refundable", "status")
        rows: list[dict[str, Any]] = []
        for info in client.channels.list():
            b = client.channels.balance(info.channel_id)
            disputed = bool(client.store.disputes(info.channel_id))
            rows.append(
                {
                    "channelId": info.hex_id,
                    "provider": info.provider,
                    "endpoint": info.endpoint,
                    "model": info.model,
                    "token": info.token,
                    "symbol": s.token(info.token).symbol,
                    "deposit": str(b.deposit),
                    "spent": str(b.spent),
                    "paid": str(b.paid),
                    "refundable": str(b.refundable),
                    "status": b.status.label,
                    "disputed": disputed,
                }
            )
            table.add_row(
                info.hex_id,
                info.provider,
                info.model,
                s.money(b.deposit, info.token),
                s.money(b.spent, info.token),
                s.money(b.refundable, info.token),
                b.status.label + (" (disputed)" if disputed else ""),
            )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    _show(table)


def _say_closed(s: Settings, verb: str, closed: Any, token: str) -> None:
    _say(
        f"{verb}: provider paid {s.money(closed.paid, token)}, refunded "
        f"{s.money(closed.refund, token)} (tx {closed.tx_hash})"
    )


def _amount(text: str) -> Any:
    try:
        return parse_amount(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _base_units(spec: Any, token: TokenInfo, option: str) -> int:
    try:
        return int(spec.base_units(token))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None
