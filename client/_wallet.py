"""The client's key: loaded from a hex private key or an encrypted keystore file.

The key lives inside an eth-account ``LocalAccount`` and nowhere else: ``repr`` shows the
address only, and every error is raised ``from None`` so no traceback carries the key. Loading
is ``tallystick.protocol``'s (``account_from_key``/``account_from_keystore``), shared with the
node.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount
from tallystick.protocol import InvalidKey, account_from_key, account_from_keystore

from ._errors import WalletError

__all__ = ["Wallet"]


class Wallet:
    """A signing key for channels, receipts and request signatures."""

    __slots__ = ("_account",)

    def __init__(self, account: LocalAccount) -> None:
        self._account = account

    @classmethod
    def from_key(cls, private_key: str) -> Wallet:
        """Load a 32-byte private key given as hex (with or without ``0x``)."""
        try:
            return cls(account_from_key(private_key))
        except InvalidKey as exc:
            raise WalletError(str(exc)) from None

    @classmethod
    def from_keystore(cls, path: str | Path, password: str) -> Wallet:
        """Decrypt an Ethereum keystore (V3 JSON) file."""
        try:
            return cls(account_from_keystore(path, password))
        except InvalidKey as exc:
            raise WalletError(str(exc)) from None

    @classmethod
    def create_keystore(
        cls, path: str | Path, password: str, private_key: str | None = None
    ) -> Wallet:
        """Write an encrypted keystore (mode 0600) for a new or given key; return its wallet."""
        wallet = cls.from_key(private_key) if private_key else cls(Account.create())
        target = Path(path)
        if target.exists():
            raise WalletError(f"{target} already exists; refusing to overwrite a keystore")
        keystore = Account.encrypt(wallet._account.key, password)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(keystore, fh)
        return wallet

    @property
    def address(self) -> str:
        """The checksummed address."""
        return str(self._account.address)

    @property
    def account(self) -> LocalAccount:
        """The eth-account signer (what ``tallystick.protocol`` signing functions take)."""
        return self._account

    def __repr__(self) -> str:
        return f"Wallet({self.address})"

    __str__ = __repr__

    def __reduce__(self) -> None:  # type: ignore[override]
        # Pickling would write the key to wherever the pickle goes.
        raise TypeError("a Wallet cannot be pickled")
