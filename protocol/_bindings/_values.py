"""What the bindings return: decoded events, mined transactions, and the contracts' structs."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from .._errors import ContractError
from .._types import Prices

ETH = "0x0000000000000000000000000000000000000000"  # the zero address: ETH as payment token


class ChannelStatus(IntEnum):
    """``ITallyEscrow.Status``."""

    NONE = 0
    OPEN = 1
    CLOSING = 2
    CLOSED = 3


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

    @property
    def prices(self) -> Prices:
        return Prices(self.input_price_per_m, self.output_price_per_m)


@dataclass(frozen=True)
class ChannelState:
    """``ITallyEscrow.ChannelView`` of ``channel_id``."""

    channel_id: bytes
    client: str
    provider: str
    token: str
    status: ChannelStatus
    input_price_per_m: int
    output_price_per_m: int
    deposit: int
    paid: int
    input_tokens: int
    output_tokens: int
    closes_at: int
    session_key: str

    @property
    def prices(self) -> Prices:
        return Prices(self.input_price_per_m, self.output_price_per_m)

    @property
    def remaining(self) -> int:
        """Deposit not yet paid to the provider."""
        return self.deposit - self.paid
