"""Checks the SDK makes before it sends a transaction, so the chain never has to say no.

A deposit the wallet cannot pay, gas it has no ETH for, a channel that is already closed:
each is said here in a sentence with the amounts in token units, instead of a revert
(``ERC20InsufficientBalance(0x45f2…, 97951990, 200000000)``) or a node's RPC error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tallystick.protocol import ETH, ChannelStatus, format_amount, token_info

from ._disputes import utc
from ._errors import ChannelStateError, ClientError
from ._types import OpenChannel

if TYPE_CHECKING:
    from ._chain import Chain

__all__ = ["require_contracts", "require_funds", "require_status"]


def require_funds(chain: Chain, owner: str, token: str, amount: int, what: str) -> None:
    """``ClientError`` unless ``owner`` holds ``amount`` of ``token`` and some ETH for gas."""
    info = token_info(chain.w3, token)
    held = chain.token_balance(token, owner)
    if held < amount:
        raise ClientError(
            f"{owner} holds {format_amount(held, info)}; {what} needs "
            f"{format_amount(amount, info)} ({format_amount(amount - held, info)} more)"
            + (" plus gas" if info.is_eth else "")
        )
    if not info.is_eth and chain.token_balance(ETH, owner) == 0:
        raise ClientError(f"{owner} has no ETH to pay the gas of {what}")


def require_status(
    chain: Chain, info: OpenChannel, allowed: tuple[ChannelStatus, ...], what: str
) -> ChannelStatus:
    """The channel's on-chain status; ``ChannelStateError`` in a sentence when not ``allowed``."""
    state = chain.channel(info.channel_id)
    status = state.status
    if status in allowed:
        return status
    if status == ChannelStatus.CLOSED:
        raise ChannelStateError(f"channel {info.hex_id} is already closed: nothing to {what}")
    if status == ChannelStatus.CLOSING:
        raise ChannelStateError(
            f"channel {info.hex_id} is closing (a unilateral close was requested); its "
            f"challenge period ends at {utc(state.closes_at)}: finalize after that"
        )
    raise ChannelStateError(f"channel {info.hex_id} is {status}: cannot {what}")


def require_contracts(chain: Chain, rpc: str) -> None:
    """``ClientError`` unless the registry and the escrow addresses hold code on this chain."""
    for flag, address in (
        ("--registry", chain.registry.address),
        ("--escrow", chain.escrow.address),
    ):
        try:
            code = bytes(chain.w3.eth.get_code(address))
        except Exception as exc:  # the transport: said as the RPC failing, not as a bad address
            raise ClientError(f"cannot read the code at {address} from {rpc}: {exc}") from exc
        if not code:
            raise ClientError(
                f"there is no contract at {flag} {address} on the chain at {rpc} (chain id "
                f"{chain.w3.eth.chain_id}): a wrong address, another chain, or a dev chain that "
                "was restarted since the deployment?"
            )
