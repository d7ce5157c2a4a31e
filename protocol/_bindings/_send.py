"""The one path of every call and transaction: read, or sign locally, send and wait."""

from __future__ import annotations

import threading
import time
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress, HexAddress, HexStr
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import (
    ContractCustomError,
    ContractLogicError,
    ContractPanicError,
    TimeExhausted,
    TransactionNotFound,
)

from .._abi import load_artifact
from .._errors import ContractError
from .._types import checksum
from ._logs import decode_logs
from ._translate import contract_error, rpc
from ._values import TxResult

RECEIPT_TIMEOUT_S = 120


def call(fn: Any, block: Any = "latest") -> Any:
    """``fn.call()`` as of ``block``, errors translated."""
    with rpc():
        return fn.call(block_identifier=block)


def contract(w3: Web3, name: str, address: str) -> Contract:
    """Artefact ``name``'s ABI at ``address``."""
    address = ChecksumAddress(HexAddress(HexStr(checksum("address", address))))
    return w3.eth.contract(address=address, abi=load_artifact(name)["abi"])


class _NonceLocks:
    # One lock per sender, held from "read pending nonce" to "sent", so several sends in a row
    # (or from several threads) never reuse a nonce. Shared by every binding in the process.
    _guard = threading.Lock()
    _locks: dict[str, threading.Lock] = {}  # noqa: RUF012 (process-wide by design)

    @classmethod
    def of(cls, address: str) -> threading.Lock:
        with cls._guard:
            return cls._locks.setdefault(address, threading.Lock())


def transact(
    w3: Web3, account: LocalAccount, fn: Any, *, value: int = 0, gas: int | None = None
) -> TxResult:
    """Build, sign locally, send and wait for ``fn`` (a contract function or constructor)."""
    params: dict[str, Any] = {"from": account.address, "value": value}
    if gas is not None:
        params["gas"] = gas
    with rpc():
        with _NonceLocks.of(account.address):
            params["nonce"] = w3.eth.get_transaction_count(account.address, "pending")
            tx = fn.build_transaction(params)  # estimates gas: most reverts surface here
            signed = account.sign_transaction(tx)
            tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
        receipt = _wait_for_receipt(w3, tx_hash)
    if receipt["status"] != 1:
        raise _replay_revert(w3, tx, receipt)
    return TxResult(
        tx_hash=bytes(tx_hash),
        gas_used=int(receipt["gasUsed"]),
        receipt=receipt,
        events=decode_logs(w3, receipt["logs"]),
    )


def _wait_for_receipt(w3: Web3, tx_hash: Any) -> Any:
    # Poll soon, then back off: an automining local chain has the receipt within milliseconds
    # (web3's fixed 0.1 s poll would dominate every test), a real chain within seconds.
    deadline = time.monotonic() + RECEIPT_TIMEOUT_S
    delay = 0.005
    while True:
        try:
            return w3.eth.get_transaction_receipt(tx_hash)
        except TransactionNotFound:
            if time.monotonic() > deadline:
                raise TimeExhausted(f"{tx_hash.hex()} not mined in {RECEIPT_TIMEOUT_S} s") from None
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


def _replay_revert(w3: Web3, tx: dict[str, Any], receipt: Any) -> ContractError:
    # A mined tx keeps no revert data; replaying it on the parent block's state recovers it. When
    # a transaction earlier in the same block caused the revert (a front-run `setPrice` before an
    # `open`), only the block's own state reproduces it, so that is tried second.
    call = {k: tx[k] for k in ("from", "to", "data", "value", "gas") if k in tx}
    block = int(receipt["blockNumber"])
    for state in (block - 1, block):
        try:
            w3.eth.call(call, block_identifier=state)  # type: ignore[arg-type]
        except (ContractCustomError, ContractLogicError, ContractPanicError) as exc:
            return contract_error(exc)
    return ContractError("Reverted", (bytes(receipt["transactionHash"]),))
