"""The provider's signing key: from ``--key`` (hex) or an encrypted ``--keystore`` file.

The key only ever lives inside the eth-account ``LocalAccount``; errors never quote it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount

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
        account: LocalAccount = Account.from_key(hex_key)
    except Exception:  # eth-account raises ValueError or others; the message may echo the key
        raise KeyLoadError("--key is not a valid secp256k1 private key") from None
    return account


def _from_keystore(
    path: Path, env: Mapping[str, str], prompt: Callable[[str], str] | None
) -> LocalAccount:
    try:
        keyfile = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise KeyLoadError(f"cannot read keystore {path}: {exc.strerror}") from None
    except ValueError:
        raise KeyLoadError(f"keystore {path} is not a JSON keystore file") from None
    password = env.get(PASSWORD_ENV)
    if password is None:
        if prompt is None:
            raise KeyLoadError(f"set {PASSWORD_ENV} to unlock keystore {path}")
        password = prompt(f"Password for {path}")
    try:
        key = Account.decrypt(keyfile, password)
    except ValueError:
        raise KeyLoadError(f"wrong password for keystore {path}") from None
    except Exception:
        raise KeyLoadError(f"keystore {path} is malformed") from None
    return _from_hex("0x" + bytes(key).hex())
