"""Private keys: from hex or an encrypted Ethereum keystore, for the client's wallet and the node.

The key lives inside an eth-account ``LocalAccount`` and nowhere else. Every failure is an
``InvalidKey`` raised ``from None``: eth-account's messages and locals may hold the key, so
no message, traceback or chained exception carries key material. Each side translates
``InvalidKey`` at its boundary (the client's ``WalletError``, the node's ``KeyLoadError``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount

from ._errors import InvalidKey

__all__ = ["account_from_key", "account_from_keystore"]


def account_from_key(private_key: str) -> LocalAccount:
    """A 32-byte private key given as hex (with or without ``0x``, surrounding blanks ignored)."""
    text = private_key.strip() if isinstance(private_key, str) else ""
    raw = text[2:] if text.lower().startswith("0x") else text
    if len(raw) != 64:
        raise InvalidKey("a private key must be 32 bytes of hex (64 hex digits)")
    try:
        account: LocalAccount = Account.from_key("0x" + raw)
    except Exception:
        raise InvalidKey("not a valid secp256k1 private key") from None
    return account


def account_from_keystore(path: str | Path, password: str | Callable[[], str]) -> LocalAccount:
    """Decrypt an Ethereum keystore (V3 JSON) file.

    ``password`` may be a function, called once the file has been read (so a missing file is
    reported before anyone is asked for a password); what it raises passes through.
    """
    keystore = _read_keystore(Path(path))
    secret = password() if callable(password) else password
    try:
        key = Account.decrypt(keystore, secret)
    except ValueError:
        raise InvalidKey(f"wrong password for keystore {path}") from None
    except Exception:
        raise InvalidKey(f"keystore {path} is not a valid Ethereum keystore") from None
    return account_from_key(bytes(key).hex())


def _read_keystore(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidKey(f"cannot read keystore {path}: {exc.strerror}") from None
    except ValueError:
        raise InvalidKey(f"keystore {path} is not JSON") from None
