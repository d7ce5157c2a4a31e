"""``tallystick gateway``: a local OpenAI-compatible server that pays providers through Tallystick.

    tallystick gateway --budget 10000000 --token $USDC      # prints a key on first start
    OPENAI_BASE_URL=http://127.0.0.1:8080/v1 OPENAI_API_KEY=tsk-... any-openai-client

It holds the wallet, opens channels on demand within a budget, routes each request by price,
measured latency, health and dispute record, fails over before the first token, verifies and
countersigns every bill through the SDK, and keeps spend per local API key in the client's
store (docs/gateway.md).
"""

from ._app import create_app
from ._errors import GatewayError
from ._ledger import USAGE_DIMENSIONS, ApiKey, Ledger, Spend
from ._routing import Candidate, Health, Router, RouteRequest
from ._service import Gateway
from ._settings import GatewaySettings

__all__ = [
    "USAGE_DIMENSIONS",
    "ApiKey",
    "Candidate",
    "Gateway",
    "GatewayError",
    "GatewaySettings",
    "Health",
    "Ledger",
    "RouteRequest",
    "Router",
    "Spend",
    "create_app",
]
