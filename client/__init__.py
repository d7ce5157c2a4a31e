"""``tallystick.client``: the SDK that pays providers per token, only for bills it verified.

    from tallystick.client import Chain, Tallystick, Wallet

    client = Tallystick(Wallet.from_key(key), "~/.tallystick/store.db",
                        chain=Chain.connect(rpc, registry, escrow))
    client.channels.open("SmolLM2-135M-Instruct", deposit=10**15)
    reply = client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=[...])
    reply.tally.cost  # verified, countersigned

Errors: see ``_errors.py`` for the tree (all derive from ``tallystick.protocol.TallystickError``).
"""

from ._audit import AuditCase, AuditReport, AuditTolerance, Reference, audit
from ._chain import Chain, Offer
from ._channels import Balance, Channels, Closed
from ._chat import TallyStream
from ._client import Tallystick
from ._discovery import check_node_listing, find_offers
from ._errors import (
    BillingDispute,
    ChannelDisputed,
    ChannelNotFound,
    ChannelStateError,
    ClientError,
    InsufficientDeposit,
    InvalidResponse,
    ListingMismatch,
    Mismatch,
    NodeError,
    NodeUnavailable,
    OfferChanged,
    PaymentRequired,
    PriceChanged,
    ProviderNotFound,
    StoreError,
    TokenChanged,
    WalletError,
)
from ._node import InsecureEndpointWarning
from ._store import Store
from ._transport import TallyTransport
from ._types import BillLine, ChannelTally, Dispute, OpenChannel
from ._verify import DEFAULT_TOLERANCE, Served, Tolerance, VerifiedBill, verify_bill
from ._wallet import Wallet

__all__ = [
    "DEFAULT_TOLERANCE",
    "AuditCase",
    "AuditReport",
    "AuditTolerance",
    "Balance",
    "BillLine",
    "BillingDispute",
    "Chain",
    "ChannelDisputed",
    "ChannelNotFound",
    "ChannelStateError",
    "ChannelTally",
    "Channels",
    "ClientError",
    "Closed",
    "Dispute",
    "InsecureEndpointWarning",
    "InsufficientDeposit",
    "InvalidResponse",
    "ListingMismatch",
    "Mismatch",
    "NodeError",
    "NodeUnavailable",
    "Offer",
    "OfferChanged",
    "OpenChannel",
    "PaymentRequired",
    "PriceChanged",
    "ProviderNotFound",
    "Reference",
    "Served",
    "Store",
    "StoreError",
    "TallyStream",
    "TallyTransport",
    "Tallystick",
    "TokenChanged",
    "Tolerance",
    "VerifiedBill",
    "Wallet",
    "WalletError",
    "audit",
    "check_node_listing",
    "find_offers",
    "verify_bill",
]
