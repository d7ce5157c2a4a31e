"""Every custom error the contracts can revert with, as a sentence a user can act on.

``explain_contract_error(exc)`` turns a ``ContractError`` into one sentence with the numbers
in token units where the token is known (``tokens`` reads a token's symbol and decimals by
address; ``token`` is the payment token of the operation, for errors that carry an amount but
no address, such as an ERC-20's ``ERC20InsufficientBalance``). A test walks every error of
every ABI in ``protocol/abi`` and fails on one this table does not translate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._errors import ContractError
from ._units import ETH_INFO, TokenInfo, format_amount

__all__ = ["ERROR_SENTENCES", "explain_contract_error"]

_STATUS = {0: "does not exist", 1: "open", 2: "closing", 3: "closed"}


class _Say:
    """What a sentence may use: the error's arguments and the money formatters."""

    def __init__(
        self,
        args: tuple[Any, ...],
        token: TokenInfo | None,
        tokens: Callable[[str], TokenInfo] | None,
    ) -> None:
        self.a = args
        self._token = token
        self._tokens = tokens

    def money(self, amount: Any, token: TokenInfo | None = None) -> str:
        info = token or self._token
        if info is None:
            return f"{int(amount)} base units"
        return format_amount(int(amount), info)

    def eth(self, amount: Any) -> str:
        return format_amount(int(amount), ETH_INFO)

    def of(self, address: Any) -> TokenInfo | None:
        if int(str(address), 16) == 0:
            return ETH_INFO
        return self._tokens(str(address)) if self._tokens else None

    def price(self, per_m: Any) -> str:
        return f"{self.money(per_m)} / 1M tokens"

    def channel(self, i: int = 0) -> str:
        value = self.a[i]
        return "0x" + value.hex() if isinstance(value, bytes) else str(value)

    def status(self, i: int) -> str:
        return _STATUS.get(int(self.a[i]), f"in status {self.a[i]}")


Sentence = Callable[[_Say], str]

ERROR_SENTENCES: dict[str, Sentence] = {
    # TallyEscrow
    "EscrowAmountTooLarge": lambda s: (
        f"the amount {s.money(s.a[0])} is above what the escrow "
        "can hold for one channel (2**96-1 base units)"
    ),
    "EscrowChallengeExpired": lambda s: (
        f"channel {s.channel()}'s challenge period ended at "
        f"unix {s.a[1]}: it can only be finalized now"
    ),
    "EscrowChallengeNotOver": lambda s: (
        f"channel {s.channel()} is still in its challenge "
        f"period until unix {s.a[1]}; finalize after that"
    ),
    "EscrowChannelClosed": lambda s: f"channel {s.channel()} is already closed",
    "EscrowChannelExists": lambda s: (
        f"a channel with id {s.channel()} already exists; open again (a new salt gives a new id)"
    ),
    "EscrowChannelNotClosing": lambda s: (
        f"channel {s.channel()} is {s.status(1)}, not closing: request a close first"
    ),
    "EscrowChannelNotFound": lambda s: (
        f"there is no channel {s.channel()} on this escrow (another chain or escrow address?)"
    ),
    "EscrowChannelNotOpen": lambda s: f"channel {s.channel()} is {s.status(1)}, not open",
    "EscrowEthTransferFailed": lambda s: (
        f"sending {s.eth(s.a[1])} to {s.a[0]} failed (a contract that refuses ETH?)"
    ),
    "EscrowFeeOnTransfer": lambda s: (
        f"the token {s.a[0]} delivered {s.a[2]} base units of the "
        f"{s.a[1]} sent: tokens that take a fee on transfer are not supported"
    ),
    "EscrowInvalidProviderSigner": lambda s: (
        f"the provider's countersignature is by {s.a[0]}, not the provider {s.a[1]}"
    ),
    "EscrowInvalidSignature": lambda s: f"a signature for channel {s.channel()} is malformed",
    "EscrowInvalidSigner": lambda s: (
        f"the receipt is signed by {s.a[0]}, which is neither the "
        f"client {s.a[1]} nor its session key"
    ),
    "EscrowLengthMismatch": lambda s: f"{s.a[0]} receipts came with {s.a[1]} signatures",
    "EscrowNotClient": lambda s: f"only the channel's client {s.a[1]} may do this, not {s.a[0]}",
    "EscrowNotParty": lambda s: (
        f"only the client {s.a[1]} or the provider {s.a[2]} may do this, not {s.a[0]}"
    ),
    "EscrowNotProvider": lambda s: (
        f"only the channel's provider {s.a[1]} may do this, not {s.a[0]}"
    ),
    "EscrowNothingToWithdraw": lambda s: (
        f"{s.a[0]} has no claimed earnings in "
        f"{_symbol(s, s.a[1])} to withdraw (claim first: tallystick-node settle)"
    ),
    "EscrowPriceAboveLimit": lambda s: (
        "the listing's prices rose to "
        f"{s.price(s.a[0])} input, {s.price(s.a[1])} output, above the accepted "
        f"{s.price(s.a[2])}, {s.price(s.a[3])}: nothing was deposited"
    ),
    "EscrowPriceTooLarge": lambda s: (
        f"the output price {s.price(s.a[0])} is too large for the escrow's arithmetic"
    ),
    "EscrowReceiptNotNewer": lambda s: (
        f"the receipt's totals ({s.a[0]} in / {s.a[1]} out) are already claimed"
    ),
    "EscrowTokenMismatch": lambda s: (
        f"the listing is now paid in {s.a[0]}, not {s.a[1]}: nothing was deposited"
    ),
    "EscrowTotalsDecreased": lambda s: (
        f"the receipt's totals ({s.a[0]} in / {s.a[1]} out) are "
        f"below those already claimed ({s.a[2]} / {s.a[3]})"
    ),
    "EscrowWrongValue": lambda s: (
        f"the transaction sent {s.eth(s.a[0])}, the deposit needs exactly {s.eth(s.a[1])}"
    ),
    "EscrowZeroAmount": lambda s: "the amount must be more than zero",
    "EscrowZeroRecipient": lambda s: "the recipient must not be the zero address",
    "EscrowZeroRegistry": lambda s: "the escrow needs a registry address (deployment error)",
    # ProviderRegistry
    "RegistryAlreadyRegistered": lambda s: (
        f"{s.a[0]} is already a registered provider (register again updates the endpoint)"
    ),
    "RegistryEmptyEndpoint": lambda s: "the endpoint must not be empty",
    "RegistryEmptyModelName": lambda s: "the model name must not be empty",
    "RegistryIndexOutOfRange": lambda s: f"index {s.a[0]} is past the last of {s.a[1]}",
    "RegistryModelNotListed": lambda s: (
        f"{s.a[0]} does not list the model 0x{s.a[1].hex()}: run tallystick-node list-model"
    ),
    "RegistryNotRegistered": lambda s: (
        f"{s.a[0]} is not a registered provider: run tallystick-node register"
    ),
    "RegistryOutputPriceTooLarge": lambda s: (
        f"the output price {s.price(s.a[0])} is above the largest allowed, {s.price(s.a[1])}"
    ),
    "RegistryZeroContextLength": lambda s: "the context length must be at least 1 token",
    # ERC-20 (OpenZeppelin v5) and the mock USDC's EIP-3009
    "ERC20InsufficientAllowance": lambda s: (
        f"the escrow may pull only {s.money(s.a[1])} of "
        f"your tokens, it needs {s.money(s.a[2])} (approve more)"
    ),
    "ERC20InsufficientBalance": lambda s: (
        f"{s.a[0]} holds {s.money(s.a[1])}, {s.money(s.a[2])} is needed"
    ),
    "ERC20InvalidApprover": lambda s: f"{s.a[0]} cannot approve (the zero address)",
    "ERC20InvalidReceiver": lambda s: f"{s.a[0]} cannot receive tokens (the zero address)",
    "ERC20InvalidSender": lambda s: f"{s.a[0]} cannot send tokens (the zero address)",
    "ERC20InvalidSpender": lambda s: f"{s.a[0]} cannot be approved (the zero address)",
    "MockUSDCAuthorizationExpired": lambda s: (
        f"the transfer authorization expired at unix {s.a[0]} (now {s.a[1]})"
    ),
    "MockUSDCAuthorizationNotYetValid": lambda s: (
        f"the transfer authorization is valid only from unix {s.a[0]} (now {s.a[1]})"
    ),
    "MockUSDCAuthorizationUsed": lambda s: (
        f"{s.a[0]}'s authorization 0x{s.a[1].hex()} was already used"
    ),
    "MockUSDCInvalidSigner": lambda s: f"the authorization is signed by {s.a[0]}, not {s.a[1]}",
    # OpenZeppelin libraries and Solidity built-ins
    "ECDSAInvalidSignature": lambda s: "a signature does not recover to any address",
    "ECDSAInvalidSignatureLength": lambda s: f"a signature is {s.a[0]} bytes long, not 65",
    "ECDSAInvalidSignatureS": lambda s: "a signature is malleable (high s); sign it again",
    "InvalidShortString": lambda s: "a short string in the contract is malformed",
    "StringTooLong": lambda s: f"the string {s.a[0]!r} is too long",
    "ReentrancyGuardReentrantCall": lambda s: (
        "a token called back into the escrow during a transfer (reentrancy refused)"
    ),
    "SafeCastOverflowedUintDowncast": lambda s: f"the value {s.a[1]} does not fit in {s.a[0]} bits",
    "SafeERC20FailedOperation": lambda s: (
        f"the token {s.a[0]} refused the transfer (no such token there, or it returned false)"
    ),
    "AddressEmptyCode": lambda s: f"there is no contract at {s.a[0]}",
    "FailedCall": lambda s: "a call inside the contract failed",
    "InsufficientBalance": lambda s: (
        f"the contract holds {s.eth(s.a[0])}, {s.eth(s.a[1])} is needed"
    ),
    "Error": lambda s: f"the contract refused: {s.a[0]}",
    "Panic": lambda s: f"the contract hit an internal check (panic code {s.a[0]:#x})",
    # what decode_revert says when there is nothing to decode
    "EmptyRevert": lambda s: (
        "the transaction reverted without a reason (is there a contract "
        "of the right kind at that address? not enough ETH for gas?)"
    ),
    "UnknownError": lambda s: (
        "the contract reverted with an error none of the known contracts "
        "declares (wrong address for the escrow or registry?)"
    ),
    "Reverted": lambda s: "the transaction reverted without saying why",
}


def _symbol(s: _Say, address: Any) -> str:
    info = s.of(address)
    return info.symbol if info and info.decimals else str(address)


def explain_contract_error(
    exc: ContractError,
    token: TokenInfo | None = None,
    tokens: Callable[[str], TokenInfo] | None = None,
) -> str:
    """One sentence for ``exc``; the raw error in brackets, for a bug report."""
    sentence = ERROR_SENTENCES.get(exc.name)
    if sentence is None:
        return f"the contract refused: {exc}"
    try:
        text = sentence(_Say(tuple(exc.args), token, tokens))
    except (IndexError, TypeError, ValueError, AttributeError):  # arguments not as declared
        return f"the contract refused: {exc}"
    return f"{text} [{exc.name}]"
