"""``tallystick gateway`` (serve, keys) and ``tallystick usage``: registered on the main CLI."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from .._chain import ETH
from ._ledger import USAGE_DIMENSIONS, ApiKey, Ledger
from ._settings import GatewaySettings

__all__ = ["gateway", "usage"]

out = Console()
err = Console(stderr=True)


def _ledger(obj: Any) -> Ledger:
    return Ledger(obj.store)


@click.group(invoke_without_command=True)
@click.option("--host", default="127.0.0.1", help="listen address (keep it local)")
@click.option("--port", type=int, default=8080)
@click.option(
    "--budget", type=click.IntRange(min=1), help="most kept deposited in open channels (base units)"
)
@click.option(
    "--deposit",
    type=click.IntRange(min=1),
    help="a new channel's deposit (default: 100 worst-case requests)",
)
@click.option("--token", default=ETH, help="payment token routed to (0x0 = ETH)")
@click.option(
    "--idle-close", type=float, default=600.0, help="close channels idle this many seconds"
)
@click.option(
    "--max-tokens",
    type=click.IntRange(min=1),
    default=256,
    help="max_tokens when a request has none",
)
@click.option(
    "--latency-weight", type=float, default=1.0, help="weight of expected time vs price in routing"
)
@click.pass_context
def gateway(ctx: click.Context, **options: Any) -> None:
    """A local OpenAI-compatible endpoint that pays providers through Tallystick.

    Point any OpenAI client at it: base_url http://HOST:PORT/v1 and a key from
    `tallystick gateway keys create`. It needs the chain (--rpc/--registry/--escrow) and the
    wallet (--key or --keystore) of the `tallystick` command.
    """
    if ctx.invoked_subcommand is not None:
        return
    if options["budget"] is None:
        raise click.UsageError("--budget is required: the most the gateway may keep in channels")
    _serve(ctx.obj, options)


def _serve(s: Any, options: dict[str, Any]) -> None:
    import uvicorn

    from ._app import create_app
    from ._service import open_gateway

    try:
        settings = GatewaySettings(
            budget=options["budget"],
            token=options["token"],
            deposit=options["deposit"],
            host=options["host"],
            port=options["port"],
            idle_close_s=options["idle_close"],
            default_max_tokens=options["max_tokens"],
            latency_weight=options["latency_weight"],
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    wallet = s.wallet()
    assert wallet is not None
    gw = open_gateway(wallet, s.store, s.chain(), settings)
    base = f"http://{settings.host}:{settings.port}/v1"
    _first_key(gw.ledger, base)
    err.print(
        f"tallystick gateway on {base}: wallet {wallet.address}, budget {settings.budget} "
        f"of {settings.token}, store {s.store}",
        highlight=False,
    )
    if settings.host not in ("127.0.0.1", "localhost", "::1"):
        err.print(
            f"[bold yellow]warning:[/bold yellow] listening on {settings.host}: anyone who can "
            "reach it with a key spends from this wallet, over plain HTTP",
            highlight=False,
        )
    app = create_app(gw)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")


def _first_key(ledger: Ledger, base_url: str) -> None:
    if ledger.keys():
        return
    key, secret = ledger.create_key("default")
    err.print(
        f"created API key {key.name!r} (no limits; shown once): [bold]{secret}[/bold]\n"
        f"  export OPENAI_BASE_URL={base_url} OPENAI_API_KEY={secret}",
        highlight=False,
        soft_wrap=True,
    )


@gateway.group()
def keys() -> None:
    """Local API keys with spending and rate limits (like LiteLLM's virtual keys)."""


def _limit_options(fn: Any) -> Any:
    fn = click.option("--rpm", type=click.IntRange(min=1), help="requests per minute")(fn)
    fn = click.option(
        "--tpm", type=click.IntRange(min=1), help="tokens per minute (prompt + max_tokens)"
    )(fn)
    fn = click.option(
        "--max-daily", type=click.IntRange(min=0), help="spend per UTC day (base units)"
    )(fn)
    fn = click.option("--max-total", type=click.IntRange(min=0), help="total spend (base units)")(
        fn
    )
    return fn


@keys.command("create")
@click.argument("name")
@_limit_options
@click.pass_obj
def keys_create(s: Any, name: str, **limits: int | None) -> None:
    """Create a key; its secret is printed once."""
    ledger = _ledger(s)
    key, secret = ledger.create_key(name, **limits)
    err.print(f"created key {key.name!r} ({key.id}); limits: {_limits(key)}", highlight=False)
    click.echo(secret)


@keys.command("list")
@click.pass_obj
def keys_list(s: Any) -> None:
    """Keys, their limits and their spend."""
    ledger = _ledger(s)
    from ._ledger import today

    table = Table("name", "id", "limits", "spent today", "spent", "status")
    for key in ledger.keys():  # noqa: SIM118 (a method, not a dict)
        table.add_row(
            key.name,
            key.id,
            _limits(key),
            str(ledger.spent(key.id, today())),
            str(ledger.spent(key.id)),
            "active" if key.active else "revoked",
        )
    out.print(table)


@keys.command("revoke")
@click.argument("name")
@click.pass_obj
def keys_revoke(s: Any, name: str) -> None:
    """Revoke a key (by name or id); its spend stays in the usage views."""
    key = _ledger(s).revoke(name)
    out.print(f"revoked key {key.name!r} ({key.id})")


@keys.command("limit")
@click.argument("name")
@_limit_options
@click.option("--clear", multiple=True, type=click.Choice(["max-total", "max-daily", "tpm", "rpm"]))
@click.pass_obj
def keys_limit(s: Any, name: str, clear: tuple[str, ...], **limits: int | None) -> None:
    """Change a key's limits (--clear NAME lifts one). A running gateway applies them at once."""
    changes: dict[str, int | None] = {k: v for k, v in limits.items() if v is not None}
    changes.update({c.replace("-", "_"): None for c in clear})
    key = _ledger(s).set_limits(name, **changes)
    out.print(f"key {key.name!r}: {_limits(key)}")


def _limits(key: ApiKey) -> str:
    parts = [
        f"{label} {value}"
        for label, value in (
            ("total", key.max_total),
            ("daily", key.max_daily),
            ("tpm", key.tpm),
            ("rpm", key.rpm),
        )
        if value is not None
    ]
    return ", ".join(parts) or "none"


@click.command()
@click.option(
    "--by",
    default="key,model,provider,day",
    help=f"comma-separated, from {','.join(USAGE_DIMENSIONS)}",
)
@click.option("--csv", "as_csv", is_flag=True, help="CSV on stdout")
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout")
@click.pass_obj
def usage(s: Any, by: str, as_csv: bool, as_json: bool) -> None:
    """Gateway spend: requests, tokens and cost (base units) by key, model, provider, day."""
    if as_csv and as_json:
        raise click.UsageError("choose one of --csv and --json")
    dims = tuple(d.strip() for d in by.split(",") if d.strip())
    rows = _ledger(s).usage(dims)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    elif as_csv:
        buffer = io.StringIO()
        writer = csv.DictWriter(
            buffer, [*dims, "requests", "prompt_tokens", "completion_tokens", "cost"]
        )
        writer.writeheader()
        writer.writerows(rows)
        click.echo(buffer.getvalue(), nl=False)
    else:
        table = Table(*dims, "requests", "prompt tokens", "completion tokens", "cost")
        for row in rows:
            table.add_row(*(str(row[k]) for k in row))
        if rows:
            totals = [
                sum(r[k] for r in rows)
                for k in ("requests", "prompt_tokens", "completion_tokens", "cost")
            ]
            table.add_row(
                *(["total"] + [""] * (len(dims) - 1) if dims else []),
                *map(str, totals),
                style="bold",
            )
        out.print(table)
