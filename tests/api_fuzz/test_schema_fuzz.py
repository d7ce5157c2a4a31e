"""Fuzz every route of the node from its own ``/openapi.json`` (schemathesis, in-process ASGI).

The app runs with a FakeEngine and an in-memory chain, a channel with a deposit that never
runs out and a credit limit that never binds, and every request is signed (§4.3) as it
reaches the app (``SignAtTheDoor``: over the exact body, for the channel's next seq), so
schema-valid cases reach the engine and the ledger while schema-invalid ones probe the
validators. Properties: no 5xx ever, and every error is the OpenAI envelope
``{"error": {"message", "type", "param", "code"}}`` with a JSON content type.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import schemathesis
from eth_account import Account
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from tallystick.node import SqliteLedger, create_app
from tallystick.node.engines import FakeEngine
from tallystick.protocol import Domain

from tests.kit.node_harness import ESCROW, SIGN_MARKER, FakeChain, SignAtTheDoor, open_channel
from tests.kit.node_harness import settings as node_settings

PROVIDER = Account.from_key("0x" + "11" * 32)
CLIENT = Account.from_key("0x" + "22" * 32)
DOMAIN = Domain(31337, ESCROW)
EXAMPLES = 40


def _app() -> Any:
    chain = FakeChain(DOMAIN, PROVIDER.address)
    open_channel(chain, CLIENT, deposit=10**30)
    return create_app(
        node_settings(credit_requests=10**6, max_body_bytes=256 * 1024),
        engine=FakeEngine(reply="Fuzzed, metered, signed."),
        chain=chain,
        store=SqliteLedger(Path(_TMP.name) / "ledger.db"),
        account=PROVIDER,
        run_worker=False,
    )


# Built at import: schemathesis's pytest integration parametrizes at collection time (its
# fixture-based loader does not run on pytest 9). The app's lifespan runs in schemathesis's
# event-loop thread until the process exits.
_TMP = tempfile.TemporaryDirectory(prefix="tallystick-fuzz-")
CHANNEL = open_channel(FakeChain(DOMAIN, PROVIDER.address), CLIENT)
AUTH = {"Authorization": SIGN_MARKER}
APP = SignAtTheDoor(_app(), CLIENT, DOMAIN, CHANNEL)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


def assert_envelope(response: Any) -> None:
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and err["type"]
    assert err["param"] is None or isinstance(err["param"], str)
    assert err["code"] is None or isinstance(err["code"], str)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_errors_and_every_error_is_an_envelope(case: Any) -> None:
    # Valid cases are signed (so they reach the engine); invalid ones may mangle the header.
    positive = case.meta is None or case.meta.generation.mode == GenerationMode.POSITIVE
    headers = {**(case.headers or {}), **AUTH} if positive else {**AUTH, **(case.headers or {})}
    response = case.call(headers=headers, timeout=10)
    assert response.status_code < 500, (case.as_curl_command(), response.text)
    if response.status_code >= 400:
        assert_envelope(response)


def test_the_schema_describes_the_bodies() -> None:
    raw = schema.raw_schema
    chat = raw["paths"]["/v1/chat/completions"]["post"]
    ref = chat["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    body = raw["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert {"model", "messages"} <= set(body["required"])
    assert body["properties"]["model"] == {"type": "string", "enum": ["fake-model"]}
    assert body["properties"]["temperature"]["maximum"] == 2
    limit = body["properties"]["max_tokens"]["anyOf"][0]
    assert (limit["type"], limit["minimum"], limit["maximum"]) == ("integer", 1, 2**32 - 1)
    stop = body["properties"]["stop"]["anyOf"]
    assert {"items": {"minLength": 1, "type": "string"}, "maxItems": 4, "type": "array"} in stop
    receipt = raw["paths"]["/v1/tally/receipts"]["post"]["requestBody"]
    assert receipt["required"] is True
    assert "422" not in chat["responses"]
    assert chat["security"] == [{"tally": []}]
