"""A provider whose bill fails verification: the caller still gets a verified answer (from the
other provider), nothing is countersigned for the cheat, and the gateway never routes to it
again, also after a restart (the dispute is in the store)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from tallystick.client import Store

from tests.kit.gateway import CHEAP, DEAR, GatewayMarket
from tests.kit.net import ThreadServer
from tests.kit.node import Tampering, fake_node_app

pytestmark = pytest.mark.chain

BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}


def _inflate(body: dict[str, Any]) -> dict[str, Any]:
    body["choices"][0]["message"]["content"] += " and words we never generated"
    return body


@pytest.fixture(scope="module")
def gw_market(anvil, w3, accounts, tmp_path_factory) -> Iterator[GatewayMarket]:
    """The cheap provider tampers with its plain answers after signing; the dear one is honest."""
    from tallystick.protocol import deploy

    deployment = deploy(w3, accounts.deployer, challenge_period=3600)
    market = GatewayMarket(deployment, accounts, anvil, w3, tmp_path_factory.mktemp("dispute"))
    cheat = market.add_provider(accounts.provider, CHEAP)  # its NodeProcess is never started
    app = fake_node_app(cheat.market, market.workdir / "cheat.db")
    try:
        with ThreadServer(Tampering(app, _inflate), cheat.market.port):
            market.add_provider(accounts.provider2, DEAR).node.start()
            yield market
    finally:
        market.stop()


def _post(gateway, key):
    return httpx.post(
        gateway.base_url + "/chat/completions",
        json=BODY,
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )


def test_a_cheating_provider_is_disputed_and_the_caller_served_by_another(
    gateway, api_key, gw_market
):
    cheat, honest = gw_market.providers
    response = _post(gateway, api_key)
    assert response.status_code == 200, response.text
    assert response.headers["x-tally-provider"].lower() == honest.address.lower()
    assert "never generated" not in response.json()["choices"][0]["message"]["content"]
    assert f"failover from {cheat.address}: billing dispute" in gateway.log()

    status = httpx.get(
        gateway.url + "/v1/tally/gateway", headers={"Authorization": f"Bearer {api_key}"}
    ).json()
    assert status["providers"][cheat.address]["disputed"] is True
    # Nothing was countersigned for the cheat; the dispute and its evidence are in the store.
    cheat_channels = [c for c in status["channels"] if c["provider"] == cheat.address]
    assert cheat_channels and all(c["spent"] == 0 for c in cheat_channels)
    store = Store(gw_market.workdir / "gateway.db")
    try:
        (dispute,) = store.disputes()
        assert store.channel(dispute.channel_id).provider == cheat.address
        assert "never generated" in str(dispute.evidence)
    finally:
        store.close()

    for _ in range(3):
        again = _post(gateway, api_key)
        assert again.headers["x-tally-provider"].lower() == honest.address.lower()

    gateway.stop()
    gateway.start()  # the dispute is read back from the store
    after = _post(gateway, api_key)
    assert after.status_code == 200
    assert after.headers["x-tally-provider"].lower() == honest.address.lower()
    pinned = httpx.post(
        gateway.base_url + "/chat/completions",
        json={**BODY, "tallystick": {"provider": cheat.address}},
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=60,
    )
    assert pinned.status_code == 503
    assert "billing dispute" in pinned.json()["error"]["message"]
