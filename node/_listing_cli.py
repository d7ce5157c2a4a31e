"""``tallystick-node register``, ``list-model``, ``set-price``, ``delist``: this provider's entries
in the registry (endpoint, and per model: prices, payment token, tokenizer and weights hashes).

Prices are read in the payment token's units (``1.5USDC``) or base units, and printed in both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from tallystick.protocol import (
    Prices,
    TokenInfo,
    format_price,
    model_id,
    parse_amount,
    token_info,
)

from ._cli_base import (
    _bindings,
    _chain_options,
    _known_tokens,
    _one_line_errors,
    _resolve_token,
    _settings,
    main,
)
from ._errors import ConfigError

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
