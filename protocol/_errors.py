"""The exception tree of ``tallystick.protocol``.

    TallystickError
    ├── ProtocolError            a message or artefact breaks docs/protocol.md
    │   ├── InvalidSignature     malformed signature, or one that does not recover
    │   ├── InvalidRequestAuth   an ``Authorization: Tally`` request signature that cannot be parsed
    │   ├── InvalidJSON          another party's JSON: too large, nested too deeply, malformed
    │   ├── InvalidChatTemplate  a chat template too deep to compile safely, or that fails to
    │   │                        compile or recurses too deeply when rendered
    │   └── TokenizerMismatch    a tokenizer bundle whose hash is not the expected one
    ├── InvalidKey               a private key or keystore that cannot be loaded (never quoted)
    └── ChainError               anything that went wrong talking to the chain
        ├── ContractError        a contract reverted; ``name`` and ``args`` of its custom error
        ├── ChainUnavailable     the RPC endpoint cannot be reached
        └── DeploymentNotFound   no deployment of the contracts recorded for this chain id

Foreign errors (web3, eth-account, json) are translated at the boundary with
``raise X(...) from exc`` so callers only ever catch these.
"""

from __future__ import annotations

from typing import Any


class TallystickError(Exception):
    """Base class of every error raised by Tallystick."""


class ProtocolError(TallystickError):
    """A message or artefact does not follow the protocol; ``field`` names the wire field."""

    def __init__(self, message: str = "", *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InvalidSignature(ProtocolError):
    """A signature is malformed (length, v, high s) or cannot be recovered."""


class InvalidRequestAuth(ProtocolError):
    """A request signature is not of the form ``tsr1.<channelId>.<seq>.…`` (§4.3)."""


class InvalidJSON(ProtocolError):
    """Another party's JSON is too large, nested too deeply to parse safely, or malformed."""


class InvalidChatTemplate(ProtocolError):
    """A chat template nests too deeply to compile safely, does not compile, or recurses."""


class TokenizerMismatch(ProtocolError):
    """A tokenizer bundle does not hash to the expected ``tokenizerHash``."""


class InvalidKey(TallystickError):
    """A private key or keystore file cannot be loaded; the message never holds key material."""


class ChainError(TallystickError):
    """Something went wrong talking to the chain."""


class ChainUnavailable(ChainError):
    """The RPC endpoint cannot be reached."""


class ContractError(ChainError):
    """A contract call reverted; ``name`` and ``args`` are its decoded custom error.

    ``args`` is the tuple of the custom error's arguments (so ``exc.args`` reads as the
    evidence, e.g. ``("EscrowZeroAmount", ())``), ``data`` the raw revert data.
    """

    def __init__(self, name: str, args: tuple[Any, ...] = (), data: bytes = b"") -> None:
        super().__init__(*args)
        self.name = name
        self.data = data

    def __str__(self) -> str:
        return f"{self.name}({', '.join(_render(a) for a in self.args)})"

    def __repr__(self) -> str:
        return f"ContractError({self})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.name, self.args, self.data))


def _render(value: Any) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, str) and not (value.startswith("0x") and len(value) == 42):
        return repr(value)  # a revert string; addresses read better bare
    return str(value)


class DeploymentNotFound(ChainError):
    """The deployments folder has no (complete) deployment for this chain id."""
