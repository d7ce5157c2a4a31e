"""Node settings: read once from CLI flags, ``TALLYSTICK_NODE_*`` variables and a TOML file.

Precedence: CLI flag > environment variable > config file > default. Names are the same in
every source (``--credit-requests``, ``TALLYSTICK_NODE_CREDIT_REQUESTS``, ``credit_requests``).
The provider key is a ``SecretStr`` so no repr, dump or log can show it.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from tallystick.protocol import ETH, is_loopback

from ._errors import ConfigError

__all__ = ["ENV_PREFIX", "Settings", "load_settings", "parse_min_claim"]

ENV_PREFIX = "TALLYSTICK_NODE_"


class Settings(BaseModel):
    """Everything the daemon needs; frozen, validated once."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # chain
    rpc: str  # one URL, or several separated by commas: the node fails over between them
    # The contracts: both addresses, or ``deployments`` (Ignition's deployments folder) to
    # read them for the RPC's chain id (``resolve_addresses``).
    escrow: str | None = None
    registry: str | None = None
    deployments: Path | None = None
    key: SecretStr | None = None
    keystore: Path | None = None
    # model / engine
    model: str | None = None
    model_name: str | None = None
    engine: Literal["transformers", "upstream", "llamacpp"] = "transformers"
    upstream_url: str | None = None
    upstream_model: str | None = None  # the id the upstream serves (default: its first)
    # TEST ONLY (make demo, tests): serve weights perturbed by Gaussian noise of this fraction
    # of each tensor's std while still claiming the listed modelHash: a cheating node.
    test_only_perturb_weights: float | None = Field(default=None, gt=0)
    upstream_api_key: SecretStr | None = None  # sent as a bearer token to the upstream
    # --engine llamacpp: the node runs llama-server (max_batch slots) on the --model GGUF
    llama_server: str | None = None  # the binary (default: the one `make llama` builds)
    llama_ctx: int | None = Field(default=None, ge=16)  # tokens per slot (default: the model's)
    llama_threads: int | None = Field(default=None, ge=1)  # default: all cores but one
    llama_args: str | None = None  # more llama-server flags, shell-quoted
    max_batch: int = Field(default=8, ge=1)
    max_queue: int = Field(default=64, ge=1)
    # http
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    # HTTPS: both or neither. Without them a non-loopback bind needs insecure_http (a TLS
    # reverse proxy in front, docs/https.md).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    insecure_http: bool = False
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    default_max_tokens: int = Field(default=512, ge=1)
    # payment gate
    credit_requests: int = Field(default=1, ge=1)
    channel_cache_ttl: float = Field(default=10.0, ge=0)
    rpm_limit: int = Field(default=0, ge=0)
    tpm_limit: int = Field(default=0, ge=0)
    # ledger / settlement
    db: Path = Path("tallystick-node.db")
    # A postgresql:// URL shares one ledger between replicas (overrides ``db``); a path is SQLite.
    ledger: str | None = None
    # A replica silent this long is dead: its reservations are dropped and another replica
    # takes over the settlement lease. Heartbeats go out every third of it.
    replica_ttl: float = Field(default=10.0, gt=0)
    settle_interval: float = Field(default=300.0, gt=0)
    claim_gas_multiple: float = Field(default=5.0, ge=0)
    # Smallest unclaimed value worth a claim, per payment token (lower-case address, the zero
    # address for ETH), in base units. A token not named here: one whole token (10**decimals)
    # for an ERC-20, the gas rule above for ETH (gas is paid in ETH, so only ETH compares).
    min_claim: dict[str, int] = Field(default_factory=dict)
    poll_interval: float = Field(default=2.0, gt=0)
    settle_max_gas_per_tx: int = Field(default=10_000_000, ge=100_000)  # per claimMany
    settle_max_backoff: float = Field(default=15.0, gt=0)  # retry cap after a chain error
    # Seconds one RPC request may take (connect, then each read). A dead or black-holed RPC
    # costs the settlement worker this much per call; a slow but healthy one (a hosted RPC,
    # a large eth_getLogs) answers well within it. Timed-out calls are not retried.
    rpc_timeout: float = Field(default=15.0, gt=0)
    # Blocks on top of an open or a top-up before the node serves on it (a reorg can drop a
    # shallower one). Claims are checked against the head: a claim a reorg dropped is simply
    # unclaimed again, and the next pass claims it again.
    confirmations: int = Field(default=0, ge=0)
    # logging
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "kv"] = "kv"

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def check_listen(self) -> None:
        """``ConfigError`` unless the HTTP side is safe to start as configured."""
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together: give both or neither")
        if self.tls or self.insecure_http or is_loopback(self.host):
            return
        raise ConfigError(
            f"refusing to serve plain HTTP on {self.host}: give --tls-cert and --tls-key, or "
            "put a TLS reverse proxy in front and pass --insecure-http (docs/https.md)"
        )

    @property
    def ledger_location(self) -> str | Path:
        """Where the ledger lives: ``ledger`` when given, else the SQLite file ``db``."""
        return self.ledger or self.db

    @model_validator(mode="after")
    def _addresses(self) -> Settings:
        if self.deployments is None and (self.escrow is None or self.registry is None):
            raise ValueError(
                "--escrow and --registry are required (or --deployments DIR, the Hardhat "
                "Ignition deployments folder holding this chain's addresses)"
            )
        return self

    @property
    def escrow_address(self) -> str:
        """The escrow (after ``resolve_addresses``)."""
        if self.escrow is None:
            raise ConfigError("the escrow address is not resolved yet")
        return self.escrow

    @property
    def registry_address(self) -> str:
        """The registry (after ``resolve_addresses``)."""
        if self.registry is None:
            raise ConfigError("the registry address is not resolved yet")
        return self.registry

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("min_claim", mode="before")
    @classmethod
    def _min_claim(cls, value: Any) -> Any:
        return parse_min_claim(value)

    @field_validator("key", mode="before")
    @classmethod
    def _key_hex(cls, value: Any) -> Any:
        if value is None or isinstance(value, SecretStr):
            return value
        raw = str(value).strip().removeprefix("0x").removeprefix("0X")
        if len(raw) != 64 or any(c not in "0123456789abcdefABCDEF" for c in raw):
            # Never echo the value: it may be a real key with a typo.
            raise ValueError("must be 32 bytes of hex (64 hex characters, optional 0x)")
        return SecretStr("0x" + raw.lower())


def parse_min_claim(value: Any) -> dict[str, int]:
    """``TOKEN=AMOUNT`` pairs (a list, or one string with commas) or a table, as a dict.

    TOKEN is an address or ``ETH``; AMOUNT is in the token's base units. ValueError names
    the pair that is wrong.
    """
    if isinstance(value, dict):
        pairs = [(str(k), v) for k, v in value.items()]
    else:
        items = [value] if isinstance(value, str) else list(value or ())
        parts = [p.strip() for item in items for p in str(item).split(",") if p.strip()]
        pairs = []
        for part in parts:
            token, sep, amount = part.partition("=")
            if not sep:
                raise ValueError(f"{part!r} is not TOKEN=AMOUNT (e.g. ETH=1000000000000000)")
            pairs.append((token.strip(), amount.strip()))
    return dict(_min_claim_pair(token, amount) for token, amount in pairs)


def _min_claim_pair(token: str, amount: Any) -> tuple[str, int]:
    address = ETH if token.upper() == "ETH" else token.lower()
    digits = address.removeprefix("0x")
    if (
        not address.startswith("0x")
        or len(digits) != 40
        or any(c not in "0123456789abcdef" for c in digits)
    ):
        raise ValueError(f"{token!r} is not a token address (0x + 40 hex) or ETH")
    try:
        base_units = int(amount)
    except (TypeError, ValueError):
        raise ValueError(f"{token}: {amount!r} is not a whole number of base units") from None
    if isinstance(amount, float) or base_units < 0:
        raise ValueError(f"{token}: {amount!r} is not a whole number of base units")
    return address, base_units


def load_settings(
    cli: Mapping[str, Any] | None = None,
    *,
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Merge the three sources and validate; ``ConfigError`` names what is missing or wrong."""
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(_read_toml(config_file))
    values.update(_from_env(os.environ if env is None else env))
    values.update({k: v for k, v in (cli or {}).items() if v is not None})
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    # Accept both a flat file and a [node] table.
    section = data.get("node", data)
    return {str(k).replace("-", "_"): v for k, v in section.items()}


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    known = Settings.model_fields
    out: dict[str, Any] = {}
    for name, value in env.items():
        if name.startswith(ENV_PREFIX):
            field = name[len(ENV_PREFIX) :].lower()
            if field in known:
                out[field] = value
    return out


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_input=False):
        field = ".".join(str(p) for p in err["loc"]) or "settings"
        flag = "--" + field.replace("_", "-")
        if not err["loc"]:  # a rule over several settings says it all itself
            parts.append(err["msg"].removeprefix("Value error, "))
        elif err["type"] == "missing":
            parts.append(
                f"{flag} is required (or {ENV_PREFIX}{field.upper()}, or {field} in --config)"
            )
        elif err["type"] == "extra_forbidden":
            parts.append(f"unknown setting {field!r}")
        else:
            parts.append(f"{flag}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)
