"""The client's spend views over a real node on anvil: ``tallystick dashboard`` in a real
headless Chromium (screenshot under tmp_path), ``tallystick usage`` and the bill's times."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tallystick.client import Chain, Tallystick, Wallet
from tallystick.client._dashboard import DashboardServer
from tallystick.client.cli import main
from tallystick.protocol import ETH_INFO, Prices, format_amount, token_info

pytestmark = pytest.mark.chain
PRICES = Prices(input_per_m=3_000_000_000, output_per_m=9_000_000_000)
MESSAGES = [{"role": "user", "content": "What is a tally stick?"}]


@pytest.fixture
def spent(
    deployment: Any, accounts: Any, w3: Any, tmp_path: Path, node_server: Any
) -> Iterator[Any]:
    """Three verified requests on one ETH channel to a real node; yields (store, info, cost)."""
    node_server(prices=PRICES)
    chain = Chain(w3, deployment.registry.address, deployment.escrow.address)
    store = tmp_path / "client.db"
    with Tallystick(Wallet(accounts.client), store, chain=chain) as client:
        info = client.channels.open("fake-model", 10**15)
        costs = [
            client.chat.completions.create(
                model="fake-model", messages=MESSAGES, max_tokens=16
            ).tally.cost
            for _ in range(3)
        ]
    yield store, info, sum(costs)


def test_the_spend_dashboard_shows_spend_per_provider_and_over_time(
    spent: Any, accounts: Any, w3: Any, chromium: Any, screenshot: Any
) -> None:
    store, info, cost = spent
    with DashboardServer(store, lambda t: token_info(w3, t), "127.0.0.1", 0) as server:
        page = chromium.new_page(viewport={"width": 1200, "height": 800})
        page.goto(server.url + "/")
        page.wait_for_selector("body[data-loaded='1']", timeout=10_000)
        shot = screenshot(page, "client-dashboard")
        per_provider = page.inner_text("#per-provider")
        channels = page.inner_text("#channels")
        bars = page.query_selector_all(f"#over-time rect.bar[data-provider='{info.provider}']")
        shown = sum(float(b.get_attribute("data-value")) for b in bars)
        page.select_option("#since", "24h")
        page.wait_for_timeout(500)
        assert accounts.provider.address in page.inner_text("#per-provider")
    assert shot.stat().st_size > 10_000
    assert accounts.provider.address in per_provider and "fake-model" in per_provider
    assert format_amount(cost, ETH_INFO) in per_provider and "\t3\t" in per_provider
    assert info.hex_id in channels and format_amount(10**15, ETH_INFO) in channels
    assert bars and abs(shown - cost / 1e18) < 1e-15


def test_usage_and_bill_read_the_same_requests(
    spent: Any, deployment: Any, anvil: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    store, info, cost = spent
    base = ["--rpc", anvil.url, "--store", str(store)]
    with _no_exit():
        main([*base, "usage", "--json", "--by", "provider,model"])
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["provider"], row["model"], row["requests"]) == (info.provider, "fake-model", 3)
    assert row["cost"] == str(cost) and row["amount"] == format_amount(cost, ETH_INFO)
    with _no_exit():
        main([*base, "bill", "--json"])
    (bill,) = json.loads(capsys.readouterr().out)
    assert [line["createdAt"][-1] for line in bill["lines"]] == ["Z"] * 3
    assert sum(int(line["cost"]) for line in bill["lines"]) == cost


class _no_exit:
    """``main`` exits only on an error: fail with its message if it does."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
        if isinstance(exc, SystemExit) and exc.code:
            raise AssertionError(f"the CLI exited with {exc.code}")
        return False
