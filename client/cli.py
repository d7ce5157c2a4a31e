"""The ``tallystick`` command: find providers, manage channels, chat, and read the verified bill.

Every option can come from the environment (``TALLYSTICK_RPC``, ``TALLYSTICK_REGISTRY``,
``TALLYSTICK_ESCROW``, ``TALLYSTICK_KEY``, ``TALLYSTICK_KEYSTORE``, ``TALLYSTICK_PASSWORD``,
``TALLYSTICK_STORE``). Errors print one line and exit non-zero; never a traceback
(``TALLYSTICK_DEBUG=1`` shows it).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.table import Table
from tallystick.protocol import (
    ETH_INFO,
    ChainUnavailable,
    ChannelStatus,
    ContractError,
    TallystickError,
    TokenInfo,
    connect,
    cost_of,
    explain_contract_error,
    format_amount,
    format_price,
    parse_amount,
    split_rpc_urls,
    token_info,
)

from ._chain import Chain
from ._client import Tallystick
from ._disputes import evidence_summary, summary, to_json, utc
from ._errors import (
    BillingDispute,
    NodeUnavailable,
    PaymentRequired,
    WalletError,
)
from ._types import Dispute, LockHolder, OpenChannel
from ._wallet import Wallet

__all__ = ["cli", "main"]

_AMOUNT_HELP = "whole tokens with the symbol (1.5USDC, '0.01 ETH') or base units (digits only)"
DEFAULT_STORE = Path.home() / ".tallystick" / "client.db"
out = Console()
err = Console(stderr=True)


@dataclass
class Settings:
    """Options of the command group, read once."""

    rpc: str
    registry: str | None
    escrow: str | None
    key: str | None
    keystore: str | None
    store: Path
    deployments: Path | None = None
    _w3: Any = None

    def wallet(self, *, required: bool = True) -> Wallet | None:
        if self.key:
            return Wallet.from_key(self.key)
        if self.keystore:
            password = os.environ.get("TALLYSTICK_PASSWORD")
            if password is None:
                password = click.prompt("keystore password", hide_input=True, err=True)
            return Wallet.from_keystore(self.keystore, password)
        if not required:
            return None  # chat and bill on session-key channels need no wallet
        raise WalletError("no key: pass --key or --keystore (or set TALLYSTICK_KEY)")

    def chain(self) -> Chain:
        if (not self.registry or not self.escrow) and self.deployments is None:
            raise click.UsageError(
                "--registry and --escrow are needed (or TALLYSTICK_REGISTRY/…), or --deployments"
            )
        try:
            split_rpc_urls(self.rpc)  # a malformed --rpc is a usage error, said before connecting
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--rpc") from None
        from ._prechecks import require_contracts

        chain = Chain.connect(self.rpc, self.registry, self.escrow, deployments=self.deployments)
        require_contracts(chain, self.rpc)
        return chain

    def token(self, token: str) -> TokenInfo:
        """The symbol and decimals of ``token``, read once from --rpc (base units if unreadable)."""
        if int(token, 16) == 0:
            return ETH_INFO
        if self._w3 is None:
            try:
                self._w3 = connect(self.rpc, 5.0)
            except Exception:
                return TokenInfo(token, f"base units of {token}", 0)
        return token_info(self._w3, token)

    def money(self, amount: int, token: str) -> str:
        """``amount`` base units of ``token`` as people read it: ``"1.5 USDC"``."""
        return format_amount(amount, self.token(token))

    def prices(self, prices: Any, token: str) -> str:
        info = self.token(token)
        return (
            f"{format_price(prices.input_per_m, info, 'input')}, "
            f"{format_price(prices.output_per_m, info, 'output')}"
        )

    def client(self, *, chain: bool = True, wallet: bool = True) -> Tallystick:
        signer = self.wallet(required=wallet)  # asks for a keystore password before connecting
        on_chain = self.chain() if chain else None
        if on_chain is not None:
            self._w3 = on_chain.w3  # token symbols are read over the client's connection
        return Tallystick(signer, self.store, chain=on_chain, on_lock_wait=_say_waiting)


def _say_waiting(channel_id: bytes, holder: LockHolder) -> None:
    err.print(
        f"[yellow]channel 0x{channel_id.hex()} is in use by another process (pid {holder.pid} "
        f"on {holder.host}); waiting for its request to finish…[/yellow]",
        highlight=False,
        soft_wrap=True,
    )


class _Commands(click.Group):
    """The command group; a contract's refusal is explained with the token amounts it quotes."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ContractError as exc:
            tokens = ctx.obj.token if isinstance(ctx.obj, Settings) else None
            exc.explained = explain_contract_error(exc, tokens=tokens)
            raise


@click.group(
    cls=_Commands,
    context_settings={
        "auto_envvar_prefix": "TALLYSTICK",
        "show_default": True,
        "help_option_names": ["-h", "--help"],
    },
)
@click.version_option(package_name="tallystick", prog_name="tallystick")
@click.option(
    "--rpc",
    default="http://127.0.0.1:8545",
    help="chain JSON-RPC URL, or several separated by commas (failover)",
)
@click.option("--registry", help="ProviderRegistry address")
@click.option("--escrow", help="TallyEscrow address")
@click.option("--key", help="client private key (hex); prefer --keystore")
@click.option("--keystore", type=click.Path(dir_okay=False), help="encrypted keystore file")
@click.option("--store", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_STORE)
@click.option(
    "--deployments",
    type=click.Path(file_okay=False, path_type=Path),
    help="Hardhat Ignition deployments folder: addresses for the RPC's chain id",
)
@click.pass_context
def cli(ctx: click.Context, **options: Any) -> None:
    """Pay AI inference per token, only for bills you have verified."""
    ctx.obj = Settings(**options)


@cli.command()
@click.option("--model", help="only this model")
@click.option("--max-input-price", type=int, help="per million input tokens, base units")
@click.option("--max-output-price", type=int, help="per million output tokens, base units")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per offer (base units)")
@click.pass_obj
def providers(
    s: Settings,
    model: str | None,
    max_input_price: int | None,
    max_output_price: int | None,
    as_json: bool,
) -> None:
    """List providers and their models, cheapest first."""
    chain = s.chain()
    from ._discovery import find_offers

    s._w3 = chain.w3
    table = Table("provider", "endpoint", "model", "input / 1M", "output / 1M", "token", "context")
    offers = find_offers(chain, model, max_input_price, max_output_price)
    if as_json:
        rows = [
            {
                "provider": o.provider,
                "endpoint": o.endpoint,
                "model": o.model,
                "inputPerMillion": str(o.prices.input_per_m),
                "outputPerMillion": str(o.prices.output_per_m),
                "token": o.token,
                "symbol": s.token(o.token).symbol,
                "decimals": s.token(o.token).decimals,
                "contextLength": o.context_length,
            }
            for o in offers
        ]
        click.echo(json.dumps(rows, indent=2))
        return
    for o in offers:
        info = s.token(o.token)
        table.add_row(
            o.provider,
            o.endpoint,
            o.model,
            format_amount(o.prices.input_per_m, info),
            format_amount(o.prices.output_per_m, info),
            f"{info.symbol} {o.token}" if not info.is_eth else "ETH",
            str(o.context_length),
        )
    _show(table)


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


@cli.command()
@click.option("--model", required=True)
@click.option("-m", "--message", help="the user message (default: read stdin)")
@click.option("--max-tokens", type=int, default=256)
@click.option("--channel", "channel_id", help="channel id (default: newest open for the model)")
@click.pass_obj
def chat(
    s: Settings, model: str, message: str | None, max_tokens: int, channel_id: str | None
) -> None:
    """Chat with a model; prints the verified bill after the answer."""
    text = message if message is not None else sys.stdin.read()
    with s.client(chain=False, wallet=False) as client:
        stream = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": text}],
            max_tokens=max_tokens,
            stream=True,
            channel=channel_id,
        )
        for chunk in stream:
            for choice in chunk.choices:
                out.print(choice.delta.content or "", end="", soft_wrap=True, highlight=False)
        out.print()
        bill = stream.tally
        if bill is not None:
            r = bill.record.record
            token = client.channel(bill.record.record.channel_id).token
            err.print(
                f"[dim]verified bill: seq {r.seq}, {r.prompt_tokens} prompt + "
                f"{r.completion_tokens} completion tokens, cost {s.money(bill.cost, token)}, "
                f"channel total {s.money(bill.total_cost, token)}[/dim]",
                highlight=False,
            )


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


@cli.command()
@click.option("--rpc", "demo_rpc", help="use this dev chain instead of starting anvil")
@click.option("--deployer-key", help="funded key on --rpc (default: the dev mnemonic's first)")
@click.option("--prompts", type=click.IntRange(1, 20), default=3, help="how many requests")
@click.option("--no-stream", is_flag=True, help="do not stream the first answer")
@click.option("--keep", is_flag=True, help="leave the chain and the node running")
@click.option("--model", type=click.Path(path_type=Path), help="SmolLM2-135M-Instruct .gguf")
def demo(
    demo_rpc: str | None,
    deployer_key: str | None,
    prompts: int,
    no_stream: bool,
    keep: bool,
    model: Path | None,
) -> None:
    """The whole marketplace on a local chain, ending in a bill checked on-chain."""
    from tallystick.devnet import DemoOptions, run_demo

    options = DemoOptions(demo_rpc, deployer_key, prompts, not no_stream, keep, model)
    sys.exit(run_demo(options, out))


from ._gateway._cli import gateway as _gateway_cmd  # noqa: E402

cli.add_command(_gateway_cmd, "gateway")


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


def _say(text: str) -> None:
    """A result line, left to the terminal to wrap (ids stay whole) and not highlighted."""
    out.print(text, soft_wrap=True, highlight=False)


def _say_closed(s: Settings, verb: str, closed: Any, token: str) -> None:
    _say(
        f"{verb}: provider paid {s.money(closed.paid, token)}, refunded "
        f"{s.money(closed.refund, token)} (tx {closed.tx_hash})"
    )


def _show(table: Table) -> None:
    """Print ``table`` whole: wider than the terminal rather than cut (ids are copied from it)."""
    from rich.measure import Measurement

    needed = Measurement.get(out, out.options.update(max_width=100_000), table).maximum
    width = out.width  # print() clamps its width= to the console's: widen the console
    out.width = max(width, needed)
    try:
        out.print(table)
    finally:
        out.width = width


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


def _explain(exc: BaseException) -> str:
    """One line saying what went wrong and what to do."""
    if isinstance(exc, PaymentRequired):
        hint = (
            "top up the channel (tallystick channel topup)"
            if exc.code != "receipt_required"
            else "the node is waiting for the last receipt; retry the request"
        )
        return f"payment required: {exc.message} — {hint}"
    if isinstance(exc, BillingDispute):
        return f"{exc} (evidence saved: dispute {exc.dispute_id}, see `tallystick disputes`)"
    if isinstance(exc, ChainUnavailable | NodeUnavailable):
        return f"{exc} — is it running, and is the URL right?"
    if isinstance(exc, ContractError):
        return getattr(exc, "explained", None) or explain_contract_error(exc)
    return str(exc)


def _fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[bold red]error:[/bold red] {message}", highlight=False, soft_wrap=True)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the command group, turning every error into one line."""
    try:
        cli.main(args=argv, prog_name="tallystick", standalone_mode=False)
    except click.exceptions.Abort:
        _fail("aborted", 130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except TallystickError as exc:
        if os.environ.get("TALLYSTICK_DEBUG"):
            raise
        _fail(_explain(exc))
    except Exception as exc:  # the promise is no traceback, whatever went wrong
        if os.environ.get("TALLYSTICK_DEBUG"):
            raise
        _fail(f"{type(exc).__name__}: {exc} (TALLYSTICK_DEBUG=1 shows the traceback)")


# The modules that add commands to `cli` (audit; usage and dashboard):
from . import _audit_cli, _usage_cli  # noqa: E402, F401
