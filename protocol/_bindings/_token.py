"""ERC-20 tokens: balances, allowances, an exact allowance around a pull, mint for mocks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from eth_account.signers.local import LocalAccount
from web3 import Web3

from .._errors import ChainError
from .._types import checksum
from ._send import call, contract, transact
from ._values import TxResult


class Token:
    """An ERC-20 token (MockUSDC in tests): balances, allowances, approve, and mint for mocks."""

    def __init__(self, w3: Web3, address: str, artifact: str = "MockUSDC") -> None:
        self.w3 = w3
        self.contract = contract(w3, artifact, address)
        self.address: str = self.contract.address

    def balance_of(self, owner: str) -> int:
        return int(call(self.contract.functions.balanceOf(checksum("owner", owner))))

    def allowance(self, owner: str, spender: str) -> int:
        fn = self.contract.functions.allowance(
            checksum("owner", owner), checksum("spender", spender)
        )
        return int(call(fn))

    def decimals(self) -> int:
        return int(call(self.contract.functions.decimals()))

    def approve(self, account: LocalAccount, spender: str, amount: int) -> TxResult:
        fn = self.contract.functions.approve(checksum("spender", spender), amount)
        return transact(self.w3, account, fn)

    def mint(self, account: LocalAccount, to: str, amount: int) -> TxResult:
        """MockUSDC only: anyone can mint on a local chain."""
        return transact(self.w3, account, self.contract.functions.mint(checksum("to", to), amount))

    @contextmanager
    def exact_allowance(self, account: LocalAccount, spender: str, amount: int) -> Iterator[None]:
        """Let ``spender`` pull exactly ``amount`` in the block; restore the allowance if it raises.

        For a pull of exactly ``amount`` (an escrow deposit): once it succeeds no allowance is left
        behind, and when the block raises (a revert, a timeout) the allowance is set back to what
        it was, so a failed ``open`` leaves nothing another transaction could pull.
        """
        previous = self.allowance(account.address, spender)
        if previous != amount:
            self.approve(account, spender, amount)
        try:
            yield
        except BaseException:
            self._restore(account, spender, previous)
            raise

    def _restore(self, account: LocalAccount, spender: str, previous: int) -> None:
        try:
            if self.allowance(account.address, spender) != previous:
                self.approve(account, spender, previous)
        except ChainError:
            pass  # the caller's error is the one to raise; the allowance left is logged by no one
