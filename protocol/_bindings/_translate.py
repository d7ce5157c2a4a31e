"""Foreign errors translated at the boundary, for reads and writes alike.

Every revert, whether found by ``eth_call``/``estimate_gas`` or by a mined transaction with
status 0, becomes ``ContractError(name, args)``; an unreachable RPC becomes
``ChainUnavailable``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import requests
from web3.exceptions import (
    ContractCustomError,
    ContractLogicError,
    ContractPanicError,
    TimeExhausted,
    Web3RPCError,
)

from .._errors import ChainError, ChainUnavailable, ContractError
from .._revert import decode_revert


@contextmanager
def rpc() -> Iterator[None]:
    """Translate transport failures and reverts at the boundary, for reads and writes alike."""
    try:
        yield
    except (ContractCustomError, ContractLogicError, ContractPanicError) as exc:
        raise contract_error(exc) from exc
    except requests.RequestException as exc:
        raise ChainUnavailable(f"chain RPC failed: {exc}") from exc
    except TimeExhausted as exc:
        raise ChainUnavailable(f"transaction not mined in time: {exc}") from exc
    except Web3RPCError as exc:  # the node refused the request itself (not a revert)
        raise ChainError(rpc_refusal(exc)) from exc


def rpc_refusal(exc: Web3RPCError) -> str:
    """A JSON-RPC error answer as a sentence; running out of ETH for gas said as such."""
    response = getattr(exc, "rpc_response", None) or {}
    error = response.get("error", {}) if isinstance(response, dict) else {}
    message = str(error.get("message") or exc.message or exc)
    if error.get("code") == -32003 or "insufficient funds" in message.lower():
        return (
            "the sending account has not enough ETH to pay this transaction's gas (and value): "
            f"fund it with some ETH first (the chain said: {message})"
        )
    code = error.get("code")
    return f"the chain's RPC refused the request: {message}" + (f" (code {code})" if code else "")


def contract_error(exc: Exception) -> ContractError:
    data = getattr(exc, "data", None)
    if isinstance(data, dict):  # some nodes nest it: {"data": "0x..."}
        data = data.get("data")
    if isinstance(data, str) and data.startswith("0x"):
        return decode_revert(bytes.fromhex(data[2:]))
    return ContractError("Reverted", (str(exc),))
