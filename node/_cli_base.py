"""What every ``tallystick-node`` command shares: the ``main`` group, the chain options,
one-line errors, the settings, the account and the contract bindings.

The commands live in ``cli`` (serve, status, model), ``_listing_cli`` (the registry entries)
and ``_earnings_cli`` (what the provider is paid); each imports this module, never another
command module, so the CLI has no import cycle.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from tallystick.protocol import (
    ETH,
    ChainError,
    ContractError,
    TallystickError,
    explain_contract_error,
    token_info,
)

from ._errors import ConfigError, KeyLoadError
from ._keys import load_account
from ._settings import Settings, load_settings

__all__ = ["main"]  # and the helpers below, for the command modules

log = logging.getLogger("tallystick.node")

F = TypeVar("F", bound=Callable[..., Any])


def _resolve_token(given: str, w3: Any, candidates: list[str]) -> str:
    """``given`` as an address: a 0x address, ``ETH``, or the symbol of one of ``candidates``."""
    if given.lower().startswith("0x"):
        from eth_utils import is_address, to_checksum_address

        if not is_address(given):
            raise ConfigError(f"--token {given!r} is not an address (nor ETH or a symbol)")
        return str(to_checksum_address(given))
    if given.upper() == "ETH":
        return ETH
    found = {
        c.lower(): c
        for c in candidates
        if int(c, 16) != 0 and token_info(w3, c).symbol.lower() == given.lower()
    }
    if len(found) == 1:
        return next(iter(found.values()))
    if not found:
        known = sorted({token_info(w3, c).symbol for c in candidates} | {"ETH"})
        raise ConfigError(
            f"no payment token with the symbol {given!r} here (known: {', '.join(known)}); "
            "give its 0x address"
        )
    raise ConfigError(
        f"several tokens have the symbol {given!r} ({', '.join(sorted(found.values()))}); "
        "give the 0x address"
    )


def _known_tokens(settings: Settings, registry: Any, provider: str) -> list[str]:
    """Tokens this provider may hold: its listings' and the dev chain's MockUSDC."""
    tokens = [listing.token for listing in registry.listings_of(provider)]
    if settings.deployments is not None:
        from tallystick.protocol import read_deployment

        try:
            found = read_deployment(settings.deployments, int(registry.w3.eth.chain_id))
        except TallystickError:
            found = None
        if found is not None and found.token:
            tokens.append(found.token)
    return tokens


def _chain_options(fn: F) -> F:
    for option in reversed(
        [
            click.option(
                "--config",
                type=click.Path(dir_okay=False, path_type=Path),
                help="TOML settings file.",
            ),
            click.option("--rpc", help="Chain RPC URL, or several separated by commas (failover)."),
            click.option("--escrow", help="TallyEscrow address."),
            click.option("--registry", help="ProviderRegistry address."),
            click.option(
                "--deployments",
                type=click.Path(file_okay=False, path_type=Path),
                help="Hardhat Ignition deployments folder: the addresses for the RPC's chain id "
                "(instead of --escrow/--registry).",
            ),
            click.option(
                "--rpc-timeout",
                type=float,
                help="Seconds one RPC request may take (default 15); timeouts are not retried.",
            ),
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
            click.option(
                "--ledger",
                help="Ledger location: a postgresql://user@host:port/db URL shared by several "
                "replicas, or a SQLite file (overrides --db).",
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
            _fail(str(exc), 2)
        except ValueError as exc:  # a malformed address or amount, caught by the bindings
            _fail(str(exc), 2)
        except ChainError as exc:
            _fail(_chain_message(exc), 1)
        except TallystickError as exc:
            _fail(str(exc), 1)

    return wrapper  # type: ignore[return-value]


def _fail(message: str, code: int) -> None:
    # One line: RPC errors can quote multi-line server answers.
    click.echo("error: " + " ".join(message.split()), err=True)
    sys.exit(code)


def _chain_message(exc: ChainError) -> str:
    if isinstance(exc, ContractError):
        return explain_contract_error(exc)
    return str(exc)


def _settings(cli: dict[str, Any]) -> Settings:
    config = cli.pop("config", None)
    if cli.get("min_claim") == ():
        cli["min_claim"] = None  # not given: the environment or the config file may say
    settings = load_settings(cli, config_file=config)
    if settings.escrow is None or settings.registry is None:
        from ._escrow import connect_node, resolve_addresses

        settings = resolve_addresses(settings, connect_node(settings))
    return settings


def _account(settings: Settings) -> Any:
    return load_account(settings, prompt=lambda text: click.prompt(text, hide_input=True))


def _bindings(settings: Settings) -> tuple[Any, Any, Any]:
    from tallystick.protocol import Escrow, Registry

    from ._escrow import connect_node

    account = _account(settings)
    w3 = connect_node(settings)
    return account, Registry(w3, settings.registry_address), Escrow(w3, settings.escrow_address)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tallystick", prog_name="tallystick-node")
def main() -> None:
    """Tallystick provider node: serve a model for per-token on-chain payment."""


def _check_ledger_owner(settings: Settings, provider: str) -> None:
    from ._ledger import open_ledger
    from ._preflight import bind_ledger

    ledger = open_ledger(settings.ledger_location)
    try:
        bind_ledger(ledger, provider, str(settings.ledger_location), claim=False)
    finally:
        ledger.close()
