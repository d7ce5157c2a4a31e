"""``tallystick.node``: the provider daemon (``tallystick-node``).

The FastAPI app (``create_app``), the payment gate (§8.1), the ledger (``LedgerStore``,
``SqliteLedger``, ``PostgresLedger`` for replicas, ``open_ledger``), the settlement worker
(§9), metrics, and the CLI in ``cli.py``. Engines
live in ``tallystick.node.engines`` (imported lazily: they pull in torch).

Errors: see ``_errors.py`` (``NodeServiceError`` → ``ConfigError``, ``KeyLoadError``, ``ApiError``).
"""

from ._app import create_app
from ._chain import (
    ChainView,
    ChannelCache,
    ClaimOutcome,
    CloseRequest,
    KeyRetirement,
)
from ._claim_plan import Candidate, plan_batches
from ._errors import ApiError, ConfigError, KeyLoadError, NodeServiceError
from ._gate import PaymentGate, Reservation
from ._keys import load_account
from ._ledger import (
    Book,
    ClaimItem,
    ClaimRow,
    LedgerStore,
    PostgresLedger,
    SqliteLedger,
    open_ledger,
)
from ._metrics import NodeMetrics
from ._ratelimit import RateLimiter
from ._settings import Settings, load_settings
from ._settlement import SettlementWorker
from ._state import NodeState
from ._types import StoredReceipt, StoredRecord

__all__ = [
    "ApiError",
    "Book",
    "Candidate",
    "ChainView",
    "ChannelCache",
    "ClaimItem",
    "ClaimOutcome",
    "ClaimRow",
    "CloseRequest",
    "ConfigError",
    "KeyLoadError",
    "KeyRetirement",
    "LedgerStore",
    "NodeMetrics",
    "NodeServiceError",
    "NodeState",
    "PaymentGate",
    "PostgresLedger",
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
    "open_ledger",
    "plan_batches",
]
