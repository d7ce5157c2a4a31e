"""``tallystick usage`` and ``tallystick dashboard``: what this wallet spent, and where.

    tallystick usage [--by model,provider,day] [--since 7d] [--csv | --json]
    tallystick usage --by key,model            the gateway's local API keys (its ledger)
    tallystick dashboard [--port 8090]         a page of spend over time and per provider

Both read the store: every request the client verified and countersigned (SDK, CLI and
gateway alike). Amounts are in the token's own units, and in base units in CSV and JSON.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from typing import Any

import click
from rich.table import Table
from tallystick.protocol import format_amount, parse_since

from ._gateway._cli import usage as _gateway_usage
from ._usage import SPEND_DIMENSIONS, spend, spend_lines
from .cli import Settings, _show, cli


@cli.command("usage")
@click.option(
    "--by",
    default="model,provider,day",
    help=f"comma-separated, from {','.join(SPEND_DIMENSIONS)}; with key: the gateway's keys",
)
@click.option("--since", help="a duration (30m, 24h, 7d) or an ISO date; default: everything")
@click.option("--csv", "as_csv", is_flag=True, help="CSV on stdout")
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout")
@click.pass_context
def usage(ctx: click.Context, by: str, since: str | None, as_csv: bool, as_json: bool) -> None:
    """Spend: requests, tokens and cost by model, provider, day (or hour, channel, token)."""
    s: Settings = ctx.obj
    dims = tuple(d.strip() for d in by.split(",") if d.strip())
    if "key" in dims:  # local API keys exist only in the gateway's ledger
        if since:
            raise click.UsageError("--since is not available with --by key")
        ctx.invoke(_gateway_usage, by=by, as_csv=as_csv, as_json=as_json)
        return
    if as_csv and as_json:
        raise click.UsageError("choose one of --csv and --json")
    start = _since(since)
    with s.client(chain=False, wallet=False) as client:
        try:
            rows = spend(spend_lines(client.store, start), dims)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--by") from None
    for row in rows:
        info = s.token(row["token"])
        row["symbol"] = info.symbol
        row["amount"] = format_amount(row["cost"], info)
    if as_json:
        click.echo(json.dumps([{**r, "cost": str(r["cost"])} for r in rows], indent=2))
    elif as_csv:
        click.echo(_csv(rows), nl=False)
    else:
        _show(_table(rows, dims, s.token))


def _since(text: str | None) -> float:
    if not text:
        return 0.0
    try:
        return parse_since(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc).removeprefix("--since "), param_hint="--since") from None


def _csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()


def _table(rows: list[dict[str, Any]], dims: tuple[str, ...], tokens: Any) -> Table:
    shown = tuple(d for d in dims if d != "token")
    table = Table(*shown, "requests", "prompt tokens", "completion tokens", "cost")
    for r in rows:
        table.add_row(
            *(r[d] for d in shown),
            str(r["requests"]),
            str(r["prompt_tokens"]),
            str(r["completion_tokens"]),
            r["amount"],
        )
    totals: dict[str, list[int]] = {}
    for r in rows:
        acc = totals.setdefault(r["token"], [0, 0, 0, 0])
        for i, k in enumerate(("requests", "prompt_tokens", "completion_tokens", "cost")):
            acc[i] += r[k]
    for token, acc in totals.items():
        label = ["total"] + [""] * (len(shown) - 1) if shown else []
        amount = format_amount(acc[3], tokens(token))
        table.add_row(*label, *map(str, acc[:3]), amount, style="bold")
    return table


@cli.command("dashboard")
@click.option("--host", default="127.0.0.1", help="listen address (keep it local)")
@click.option("--port", type=int, default=8090)
@click.pass_obj
def dashboard(s: Settings, host: str, port: int) -> None:
    """A local page of spend over time and per provider, from the store (Ctrl-C stops it)."""
    import threading

    from ._dashboard import DashboardServer

    try:
        server = DashboardServer(s.store, s.token, host, port)
    except OSError as exc:
        raise click.UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    with server:
        click.echo(f"spend dashboard of {s.store}: {server.url}/  (Ctrl-C stops it)")
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
