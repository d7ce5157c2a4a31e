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
)

from .._errors import ChainUnavailable, ContractError
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


def contract_error(exc: Exception) -> ContractError:
    data = getattr(exc, "data", None)
    if isinstance(data, dict):  # some nodes nest it: {"data": "0x..."}
        data = data.get("data")
    if isinstance(data, str) and data.startswith("0x"):
        return decode_revert(bytes.fromhex(data[2:]))
    return ContractError("Reverted", (str(exc),))
