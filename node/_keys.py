"""The provider's signing key: from ``--key`` (hex) or an encrypted ``--keystore`` file.

The key only ever lives inside the eth-account ``LocalAccount``; errors never quote it. Loading
is ``tallystick.protocol``'s (``account_from_key``/``account_from_keystore``), shared with the
client's wallet.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from eth_account.signers.local import LocalAccount
from tallystick.protocol import InvalidKey, account_from_key, account_from_keystore

from ._errors import KeyLoadError
from ._settings import ENV_PREFIX, Settings

__all__ = ["load_account"]

PASSWORD_ENV = ENV_PREFIX + "KEYSTORE_PASSWORD"


def load_account(
    settings: Settings,
    *,
    prompt: Callable[[str], str] | None = None,
    env: Mapping[str, str] | None = None,
) -> LocalAccount:
    """The provider account; ``KeyLoadError`` with a one-line reason if it cannot be read."""
    if settings.key is not None and settings.keystore is not None:
        raise KeyLoadError("give either --key or --keystore, not both")
    if settings.key is not None:
        return _from_hex(settings.key.get_secret_value())
    if settings.keystore is not None:
        return _from_keystore(settings.keystore, os.environ if env is None else env, prompt)
    raise KeyLoadError("the provider key is required: --key HEX or --keystore FILE")


def _from_hex(hex_key: str) -> LocalAccount:
    try:
        return account_from_key(hex_key)
    except InvalidKey as exc:
        raise KeyLoadError(f"--key: {exc}") from None


def _from_keystore(
    path: Path, env: Mapping[str, str], prompt: Callable[[str], str] | None
) -> LocalAccount:
    def password() -> str:
        secret = env.get(PASSWORD_ENV)
        if secret is not None:
            return secret
        if prompt is None:
            raise KeyLoadError(f"set {PASSWORD_ENV} to unlock keystore {path}")
        return prompt(f"Password for {path}")

    try:
        return account_from_keystore(path, password)
    except InvalidKey as exc:
        raise KeyLoadError(str(exc)) from None
