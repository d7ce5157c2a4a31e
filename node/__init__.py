"""``tallystick.node``: the provider daemon (``tallystick-node``).

The FastAPI app (``create_app``), the payment gate (§8.1), the ledger (``LedgerStore``,
``SqliteLedger``), the settlement worker (§9), metrics, and the CLI in ``cli.py``. Engines
live in ``tallystick.node.engines`` (imported lazily: they pull in torch).

Errors: see ``_errors.py`` (``NodeError`` → ``ConfigError``, ``KeyLoadError``, ``ApiError``).
"""

from ._app import NodeState, create_app
from ._chain import ChainView, ChannelCache, ClaimOutcome, CloseRequest, ListingInfo
from ._errors import ApiError, ConfigError, KeyLoadError, NodeError
from ._gate import PaymentGate, Reservation
from ._keys import load_account
from ._ledger import ClaimItem, ClaimRow, LedgerStore, SqliteLedger
from ._metrics import NodeMetrics
from ._ratelimit import RateLimiter
from ._settings import Settings, load_settings
from ._settlement import Candidate, SettlementWorker, plan_batches
from ._types import ChannelInfo, ChannelStatus, StoredReceipt, StoredRecord

__all__ = [
    "ApiError",
    "Candidate",
    "ChainView",
    "ChannelCache",
    "ChannelInfo",
    "ChannelStatus",
    "ClaimItem",
    "ClaimOutcome",
    "ClaimRow",
    "CloseRequest",
    "ConfigError",
    "KeyLoadError",
    "LedgerStore",
    "ListingInfo",
    "NodeError",
    "NodeMetrics",
    "NodeState",
    "PaymentGate",
    "RateLimiter",
    "Reservation",
    "Settings",
    "SettlementWorker",
    "SqliteLedger",
    "StoredReceipt",
    "StoredRecord",
    "create_app",
    "load_account",
    "load_settings",
    "plan_batches",
]
