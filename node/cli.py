"""``tallystick-node``: serve a model, manage the registry listing, settle, show status.

Every failure is one line on stderr and a non-zero exit (1: chain/contract, 2: settings).
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from tallystick.protocol import ChainError, Prices, TallystickError, model_id

from ._errors import ConfigError, KeyLoadError
from ._keys import load_account
from ._settings import Settings, load_settings

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])
ETH = "0x0000000000000000000000000000000000000000"


def _chain_options(fn: F) -> F:
    for option in reversed(
        [
            click.option(
                "--config",
                type=click.Path(dir_okay=False, path_type=Path),
                help="TOML settings file.",
            ),
            click.option("--rpc", help="Chain RPC URL."),
            click.option("--escrow", help="TallyEscrow address."),
            click.option("--registry", help="ProviderRegistry address."),
            click.option("--key", help="Provider private key (hex). Prefer --keystore."),
            click.option(
                "--keystore",
                type=click.Path(dir_okay=False, path_type=Path),
                help="Encrypted JSON keystore (password: TALLYSTICK_NODE_KEYSTORE_PASSWORD).",
            ),
            click.option(
                "--db",
                type=click.Path(dir_okay=False, path_type=Path),
                help="Ledger file (SQLite).",
            ),
            click.option("--log-level", help="DEBUG, INFO, WARNING or ERROR."),
            click.option(
                "--log-format", type=click.Choice(["json", "kv"]), help="Log line format."
            ),
        ]
    ):
        fn = option(fn)
    return fn


def _one_line_errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ConfigError, KeyLoadError) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except ChainError as exc:
            click.echo(f"error: {_chain_message(exc)}", err=True)
            sys.exit(1)
        except TallystickError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def _chain_message(exc: ChainError) -> str:
    name = getattr(exc, "name", None)
    if name == "RegistryNotRegistered":
        return f"{exc}: this key is not a registered provider; run `tallystick-node register`"
    return f"contract error {exc}" if name else str(exc)


def _settings(cli: dict[str, Any]) -> Settings:
    config = cli.pop("config", None)
    return load_settings(cli, config_file=config)


def _account(settings: Settings) -> Any:
    return load_account(settings, prompt=lambda text: click.prompt(text, hide_input=True))


def _bindings(settings: Settings) -> tuple[Any, Any, Any]:
    from tallystick.protocol import Escrow, Registry, connect

    account = _account(settings)
    w3 = connect(settings.rpc)
    return account, Registry(w3, settings.registry), Escrow(w3, settings.escrow)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Tallystick provider node: serve a model for per-token on-chain payment."""


@main.command()
@_chain_options
@click.option("--model", help="Model folder, .gguf file or hub id.")
@click.option("--model-name", help="The id served in /v1/models (default: from the path).")
@click.option("--engine", type=click.Choice(["transformers", "upstream"]))
@click.option("--upstream-url", help="OpenAI-compatible server to meter (--engine upstream).")
@click.option("--host")
@click.option("--port", type=int)
@click.option("--credit-requests", type=int, help="Unpaid requests allowed per channel.")
@click.option("--settle-interval", type=float, help="Seconds between settlement passes.")
@click.option("--claim-gas-multiple", type=float, help="Claim when unclaimed > this x gas cost.")
@click.option("--rpm-limit", type=int, help="Requests per minute per channel (0 = off).")
@click.option("--tpm-limit", type=int, help="Tokens per minute per channel (0 = off).")
@click.option("--max-batch", type=int)
@click.option("--max-queue", type=int)
@_one_line_errors
def serve(**cli: Any) -> None:
    """Serve the OpenAI-compatible API and settle receipts in the background."""
    import uvicorn

    from ._app import create_app
    from ._logging import configure_logging

    settings = _settings(cli)
    configure_logging(settings.log_level, settings.log_format)
    account = _account(settings)
    app = create_app(settings, account=account)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        log_level=settings.log_level.lower(),
    )


@main.command()
@_chain_options
@click.option("--endpoint", required=True, help="Public base URL of this node.")
@click.option("--metadata", default="", help="Free-form metadata (JSON).")
@_one_line_errors
def register(endpoint: str, metadata: str, **cli: Any) -> None:
    """Register this key as a provider (or update its endpoint)."""
    account, registry, _ = _bindings(_settings(cli))
    if registry.get_provider(account.address).registered:
        tx = registry.update_endpoint(account, endpoint)
        click.echo(f"endpoint updated to {endpoint} (tx 0x{tx.tx_hash.hex()})")
    else:
        tx = registry.register(account, endpoint, metadata)
        click.echo(f"registered {account.address} at {endpoint} (tx 0x{tx.tx_hash.hex()})")


@main.command("list-model")
@_chain_options
@click.option("--model", "name", required=True, help="Model name (the id served).")
@click.option("--input-price", type=int, required=True, help="Per million input tokens.")
@click.option("--output-price", type=int, required=True, help="Per million output tokens.")
@click.option("--token", default=ETH, show_default=True, help="Payment token (0x0 = ETH).")
@click.option("--tokenizer-hash", help="0x-hex keccak of the tokenizer bundle.")
@click.option("--model-path", help="Compute the tokenizer hash from this model instead.")
@click.option("--context-length", type=int, required=True)
@_one_line_errors
def list_model(
    name: str,
    input_price: int,
    output_price: int,
    token: str,
    tokenizer_hash: str | None,
    model_path: str | None,
    context_length: int,
    **cli: Any,
) -> None:
    """List (or re-list) a model with its prices and tokenizer hash."""
    digest = _tokenizer_hash(tokenizer_hash, model_path)
    account, registry, _ = _bindings(_settings(cli))
    tx = registry.list_model(
        account,
        name,
        Prices(input_price, output_price),
        token=token,
        tokenizer_hash=digest,
        context_length=context_length,
    )
    click.echo(
        f"listed {name} (modelId 0x{model_id(name).hex()}, tokenizerHash "
        f"0x{digest.hex()}, tx 0x{tx.tx_hash.hex()})"
    )


def _tokenizer_hash(given: str | None, model_path: str | None) -> bytes:
    if (given is None) == (model_path is None):
        raise ConfigError("give exactly one of --tokenizer-hash and --model-path")
    if given is not None:
        raw = given.removeprefix("0x")
        if len(raw) != 64:
            raise ConfigError("--tokenizer-hash must be 32 bytes of hex")
        try:
            return bytes.fromhex(raw)
        except ValueError:
            raise ConfigError("--tokenizer-hash must be 32 bytes of hex") from None
    return _bundle_of(str(model_path)).hash()


def _bundle_of(source: str) -> Any:
    from tallystick.protocol import TokenizerBundle
    from transformers import AutoTokenizer

    path = Path(source).expanduser()
    kwargs: dict[str, Any] = {}
    folder = source
    if path.is_file():
        folder, kwargs["gguf_file"] = str(path.parent), path.name
    try:
        return TokenizerBundle.from_hf(AutoTokenizer.from_pretrained(folder, **kwargs))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the tokenizer of {source}: {exc}") from exc


@main.command("set-price")
@_chain_options
@click.option("--model", "name", required=True)
@click.option("--input-price", type=int, required=True)
@click.option("--output-price", type=int, required=True)
@_one_line_errors
def set_price(name: str, input_price: int, output_price: int, **cli: Any) -> None:
    """Change a listing's prices (new channels only)."""
    account, registry, _ = _bindings(_settings(cli))
    tx = registry.set_price(account, model_id(name), Prices(input_price, output_price))
    click.echo(f"{name}: {input_price}/{output_price} per million (tx 0x{tx.tx_hash.hex()})")


@main.command()
@_chain_options
@click.option("--model", "name", required=True)
@_one_line_errors
def delist(name: str, **cli: Any) -> None:
    """Stop new channels for a model (open channels are unaffected)."""
    account, registry, _ = _bindings(_settings(cli))
    tx = registry.delist(account, model_id(name))
    click.echo(f"delisted {name} (tx 0x{tx.tx_hash.hex()})")


@main.command()
@_chain_options
@click.option("--token", default=ETH, show_default=True)
@click.option("--to", "to", help="Recipient (default: the provider).")
@_one_line_errors
def withdraw(token: str, to: str | None, **cli: Any) -> None:
    """Pull claimed earnings to your wallet."""
    account, _, escrow = _bindings(_settings(cli))
    tx = escrow.withdraw(account, token, to)
    click.echo(f"withdrew {tx.value} of {token} (tx 0x{tx.tx_hash.hex()})")


@main.command()
@_chain_options
@_one_line_errors
def settle(**cli: Any) -> None:
    """Claim every countersigned receipt now, in one claimMany."""
    settings = _settings(cli)
    outcome = asyncio.run(_settle(settings, _account(settings)))
    if outcome is None:
        click.echo("nothing to claim")
    else:
        click.echo(
            f"claimed {outcome.amount} over {len(outcome.claimed)} channel(s), "
            f"{len(outcome.skipped)} skipped (tx {outcome.tx_hash}, gas {outcome.gas_used})"
        )
        for cid, reason in outcome.skipped.items():
            click.echo(f"  skipped 0x{cid.hex()}: {reason}")


async def _settle(settings: Settings, account: Any) -> Any:
    from ._chain import ChannelCache
    from ._escrow import EscrowChain
    from ._ledger import SqliteLedger
    from ._metrics import NodeMetrics
    from ._settlement import SettlementWorker

    chain = await EscrowChain.connect(settings, account)
    ledger = SqliteLedger(settings.db)
    try:
        cache = ChannelCache(chain, ledger, 0)
        worker = SettlementWorker(
            chain=chain, ledger=ledger, cache=cache, metrics=NodeMetrics(), settings=settings
        )
        return await worker.settle(force=True)
    finally:
        ledger.close()


@main.command()
@_chain_options
@_one_line_errors
def status(**cli: Any) -> None:
    """Registration, listings, channels and earnings, as tables."""
    from ._status import show_status

    settings = _settings(cli)
    account, registry, escrow = _bindings(settings)
    show_status(settings, account.address, registry, escrow)
