"""``tallystick bill`` and ``tallystick disputes``: the verified bill of each channel, and the
bills this client refused with their evidence and the way out of the channel."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.table import Table
from tallystick.protocol import ChannelStatus, TokenInfo, cost_of, format_amount

from ._client import Tallystick
from ._disputes import evidence_summary, summary, to_json, utc
from ._types import Dispute, OpenChannel
from .cli import Settings, _say, _show, cli, out


@cli.command()
@click.option("--channel", "channel_id", help="channel id or a unique prefix (default: every one)")
@click.option("--json", "as_json", is_flag=True, help="every channel's bill lines (base units)")
@click.pass_obj
def bill(s: Settings, channel_id: str | None, as_json: bool) -> None:
    """Per-request bill of verified, countersigned requests."""
    with s.client(chain=False, wallet=False) as client:
        channels = [client.channel(channel_id)] if channel_id else client.channels.list()
        if as_json:
            click.echo(json.dumps([_bill_json(client, i, s) for i in channels], indent=2))
            return
        for info in channels:
            # The title on its own line: a table title wraps, and the id is copied from it.
            out.print(
                f"{info.hex_id} · {info.model} · {info.provider}", soft_wrap=True, highlight=False
            )
            _show(_bill_table(client, info, s.token(info.token)))
            disputes = client.store.disputes(info.channel_id)
            if disputes:
                _show(_disputes_table(disputes, title="refused bills"))
                _say(client.biller.way_out(info))


@cli.command()
@click.option("--channel", "channel_id", help="channel id (default: every channel)")
@click.option("--json", "as_json", is_flag=True, help="every dispute with its full evidence")
@click.pass_obj
def disputes(s: Settings, channel_id: str | None, as_json: bool) -> None:
    """Bills you refused to countersign, with the evidence, and how to leave the channel."""
    with s.client(chain=bool(s.registry and s.escrow), wallet=False) as client:
        cid = client.channel(channel_id).channel_id if channel_id else None
        found = client.store.disputes(cid)
        infos = {d.channel_id: client.store.channel(d.channel_id) for d in found}
        ways = {
            c: client.biller.way_out(i) if i.status != ChannelStatus.CLOSED else None
            for c, i in infos.items()
        }
        if as_json:
            rows = [to_json(d, infos[d.channel_id], ways[d.channel_id]) for d in found]
            click.echo(json.dumps(rows, indent=2))
            return
        if not found:
            out.print("no disputes: every bill you received was verified and countersigned")
            return
        _show(
            _disputes_table(found, title="refused bills (tallystick disputes --json: all evidence)")
        )
        for cid_, way in ways.items():
            if way:
                _say(f"0x{cid_.hex()}: {way}")


def _bill_table(client: Tallystick, info: OpenChannel, token: TokenInfo) -> Table:
    table = Table(
        "seq",
        "time (UTC)",
        "prompt tokens",
        "completion tokens",
        "cost",
    )
    lines = client.store.bill(info.channel_id)
    for line in lines:
        table.add_row(
            str(line.seq),
            _iso(line.created_at),
            str(line.prompt_tokens),
            str(line.completion_tokens),
            format_amount(line.cost, token),
        )
    tally = client.store.tally(info.channel_id)
    total = cost_of(tally.input_tokens, tally.output_tokens, info.prices)
    table.add_row(
        "total",
        "",
        str(tally.input_tokens),
        str(tally.output_tokens),
        format_amount(total, token),
        style="bold",
    )
    return table


def _iso(at: float) -> str:
    """Unix seconds as ISO 8601 UTC, to the second."""
    import datetime

    return datetime.datetime.fromtimestamp(at, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _bill_json(client: Tallystick, info: OpenChannel, s: Settings) -> dict[str, Any]:
    tally = client.store.tally(info.channel_id)
    return {
        "channelId": info.hex_id,
        "provider": info.provider,
        "model": info.model,
        "token": info.token,
        "symbol": s.token(info.token).symbol,
        "lines": [
            {
                "seq": line.seq,
                "createdAt": _iso(line.created_at),
                "promptTokens": line.prompt_tokens,
                "completionTokens": line.completion_tokens,
                "cost": str(line.cost),
            }
            for line in client.store.bill(info.channel_id)
        ],
        "inputTokens": tally.input_tokens,
        "outputTokens": tally.output_tokens,
        "total": str(cost_of(tally.input_tokens, tally.output_tokens, info.prices)),
    }


def _disputes_table(found: list[Dispute], title: str) -> Table:
    table = Table("id", "channel", "seq", "when", "what did not check out", "evidence", title=title)
    for d in found:
        table.add_row(
            str(d.id),
            "0x" + d.channel_id.hex(),
            str(d.seq) if d.seq is not None else "-",
            utc(int(d.created_at)),
            summary(d.mismatches),
            evidence_summary(d.evidence),
        )
    return table
