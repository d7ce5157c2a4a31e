"""What the bindings return: decoded events, mined transactions, and the contracts' structs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from eth_utils import to_checksum_address

from .._errors import ContractError
from .._types import Prices


class ChannelStatus(IntEnum):
    """``ITallyEscrow.Status``; written (``str``, f-strings) as its label: ``"open"``."""

    NONE = 0
    OPEN = 1
    CLOSING = 2
    CLOSED = 3

    @property
    def label(self) -> str:
        """``"none"``, ``"open"``, ``"closing"`` or ``"closed"``: how stores and CLIs spell it."""
        return self.name.lower()

    @classmethod
    def from_label(cls, label: str) -> ChannelStatus:
        """The status spelled ``label`` (``ValueError`` for another word)."""
        try:
            return cls[label.upper()]
        except KeyError:
            raise ValueError(f"no channel status {label!r}") from None

    def __str__(self) -> str:
        return self.label

    def __format__(self, spec: str) -> str:
        return format(self.label, spec)


@dataclass(frozen=True)
class Event:
    """A decoded log: event name, arguments by name, and where it was emitted."""

    name: str
    args: dict[str, Any]
    address: str
    block_number: int
    tx_hash: bytes
    log_index: int


@dataclass(frozen=True)
class SkippedReceipt:
    """A ``ReceiptSkipped`` event of ``claimMany`` with its reason decoded."""

    index: int
    channel_id: bytes
    reason: ContractError
    block_number: int


@dataclass(frozen=True)
class TxResult:
    """A mined, successful transaction; ``value`` is what the function returned, if useful."""

    tx_hash: bytes
    gas_used: int
    receipt: Any = field(repr=False)
    events: list[Event] = field(default_factory=list)
    value: Any = None

    def event(self, name: str) -> Event:
        """The first event called ``name`` (``KeyError`` if none)."""
        for ev in self.events:
            if ev.name == name:
                return ev
        raise KeyError(f"transaction emitted no {name} event")

    def events_named(self, name: str) -> list[Event]:
        """Every event called ``name``, in log order."""
        return [ev for ev in self.events if ev.name == name]

    @property
    def skipped(self) -> list[SkippedReceipt]:
        """The receipts ``claimMany`` skipped, with decoded reasons."""
        from ._logs import skipped

        return [skipped(ev) for ev in self.events_named("ReceiptSkipped")]

    def with_value(self, value: Any) -> TxResult:
        return TxResult(self.tx_hash, self.gas_used, self.receipt, self.events, value)


@dataclass(frozen=True)
class ProviderInfo:
    """``IProviderRegistry.Provider`` of ``address``."""

    address: str
    endpoint: str
    metadata: str
    registered: bool


@dataclass(frozen=True)
class Listing:
    """``IProviderRegistry.Listing`` of (``provider``, ``model_id``)."""

    provider: str
    model_id: bytes
    name: str
    input_price_per_m: int
    output_price_per_m: int
    token: str
    tokenizer_hash: bytes
    context_length: int
    active: bool
    model_hash: bytes = bytes(32)  # the served weights (§10.1); zero: no claim, no audit

    @classmethod
    def from_abi(cls, provider: str, model_id: bytes, raw: Sequence[Any]) -> Listing:
        """Decode ``getListing``'s return value."""
        pi, po, token, tokenizer_hash, context_length, active, name, weights = raw
        return cls(
            provider=to_checksum_address(provider),
            model_id=bytes(model_id),
            name=name,
            input_price_per_m=int(pi),
            output_price_per_m=int(po),
            token=to_checksum_address(token),
            tokenizer_hash=bytes(tokenizer_hash),
            context_length=int(context_length),
            active=bool(active),
            model_hash=bytes(weights),
        )

    @property
    def prices(self) -> Prices:
        return Prices(self.input_price_per_m, self.output_price_per_m)


@dataclass(frozen=True)
class ChannelState:
    """A channel as the escrow holds it (``ITallyEscrow.ChannelView``), and its ``modelId``.

    ``getChannel`` does not return the model: ``model_id`` is None until a reader that needs
    it fills it in from the ``ChannelOpened`` event (the node does, ``Escrow.opened_models``).
    """

    channel_id: bytes
    client: str
    provider: str
    token: str
    status: ChannelStatus
    model_id: bytes | None
    prices: Prices  # snapshotted at open
    deposit: int
    paid: int
    claimed_input: int  # totals of the last claimed receipt
    claimed_output: int
    closes_at: int
    session_key: str | None = None  # None: no session key authorised

    @classmethod
    def from_abi(
        cls, channel_id: bytes, raw: Sequence[Any], model_id: bytes | None = None
    ) -> ChannelState:
        """Decode ``getChannel``'s 12-field return value (the one place that does)."""
        client, provider, token, status, pi, po, deposit, paid, i, o, closes_at, key = raw
        return cls(
            channel_id=bytes(channel_id),
            client=to_checksum_address(client),
            provider=to_checksum_address(provider),
            token=to_checksum_address(token),
            status=ChannelStatus(int(status)),
            model_id=model_id,
            prices=Prices(int(pi), int(po)),
            deposit=int(deposit),
            paid=int(paid),
            claimed_input=int(i),
            claimed_output=int(o),
            closes_at=int(closes_at),
            session_key=None if int(key, 16) == 0 else to_checksum_address(key),
        )

    @property
    def remaining(self) -> int:
        """Deposit not yet paid to the provider."""
        return self.deposit - self.paid

    def may_sign(self, address: str) -> bool:
        """True when ``address`` is the channel's client or its authorised session key."""
        return address == self.client or (
            self.session_key is not None and address == self.session_key
        )
