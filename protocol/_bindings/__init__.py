"""Typed web3 bindings of ProviderRegistry, TallyEscrow and ERC-20 tokens.

Reads return frozen dataclasses; writes take an eth-account ``LocalAccount``, build and sign
the transaction locally (the node never holds keys), send it, wait for it to be mined and
return a ``TxResult`` with the decoded events. Every revert becomes ``ContractError(name,
args)``; an unreachable RPC becomes ``ChainUnavailable``.

    _values.py     what reads return: ChannelState, Listing, ProviderInfo, Event, TxResult
    _translate.py  foreign errors translated at the boundary (``rpc()``)
    _send.py       the one path of a call and of a transaction (nonce, sign, send, wait)
    _logs.py       the one log decoder (a receipt's logs and event queries)
    _connect.py    ``connect``: failover over several RPC URLs on one chain
    _token.py, _registry.py, _escrow.py   one binding per contract
"""

from .._types import ETH
from ._connect import connect
from ._escrow import Escrow
from ._logs import decode_logs
from ._registry import Registry
from ._send import transact
from ._token import Token
from ._values import (
    ChannelState,
    ChannelStatus,
    Event,
    Listing,
    ProviderInfo,
    SkippedReceipt,
    TxResult,
)

__all__ = [
    "ETH",
    "ChannelState",
    "ChannelStatus",
    "Escrow",
    "Event",
    "Listing",
    "ProviderInfo",
    "Registry",
    "SkippedReceipt",
    "Token",
    "TxResult",
    "connect",
    "decode_logs",
    "transact",
]
