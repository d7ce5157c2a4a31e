"""The ``tallystick`` command: find providers, manage channels, chat, and read the verified bill.

Every option can come from the environment (``TALLYSTICK_RPC``, ``TALLYSTICK_REGISTRY``,
``TALLYSTICK_ESCROW``, ``TALLYSTICK_KEY``, ``TALLYSTICK_KEYSTORE``, ``TALLYSTICK_PASSWORD``,
``TALLYSTICK_STORE``). Errors print one line and exit non-zero; never a traceback
(``TALLYSTICK_DEBUG=1`` shows it).

This module holds the group, its settings and ``providers``, ``chat`` and ``demo``; the other
commands add themselves to ``cli`` from their own modules: ``_channel_cli`` (channel),
``_bill_cli`` (bill, disputes), ``_audit_cli``, ``_usage_cli`` (usage, dashboard) and
``_gateway/_cli`` (gateway).
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
    ContractError,
    TallystickError,
    TokenInfo,
    connect,
    explain_contract_error,
    format_amount,
    format_price,
    split_rpc_urls,
    token_info,
)

from ._chain import Chain
from ._client import Tallystick
from ._errors import (
    BillingDispute,
    NodeUnavailable,
    PaymentRequired,
    WalletError,
)
from ._types import LockHolder
from ._wallet import Wallet

__all__ = ["cli", "main"]

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
    table = Table(
        "provider",
        "endpoint",
        "model",
        "input / 1M",
        "output / 1M",
        "token",
        "context",
        "failed audits",  # published on-chain by any client (AuditReported, §10.7)
    )
    offers = find_offers(chain, model, max_input_price, max_output_price)
    failed = chain.published_audits({o.provider for o in offers})
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
                "failedAuditsPublished": failed.get(o.provider, 0),
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
            str(failed.get(o.provider, 0)),
        )
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


def _say(text: str) -> None:
    """A result line, left to the terminal to wrap (ids stay whole) and not highlighted."""
    out.print(text, soft_wrap=True, highlight=False)


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


# The modules that add commands to `cli`: channel; bill and disputes; audit; usage and dashboard.
from . import _audit_cli, _bill_cli, _channel_cli, _usage_cli  # noqa: E402, F401
