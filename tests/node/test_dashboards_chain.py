"""The node's /dashboard in a real headless Chromium, over a real node on anvil.

Paid requests go through a real uvicorn server against the deployed contracts, the settlement
worker claims them on-chain, and the page must show what the ledger and the chain say: the
amount earned in ETH, the channel id whole with its deposit, the claim, speed figures and one
bar per model in the earnings chart. A screenshot is kept under the test's tmp_path.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from tallystick.node import Settings, create_app
from tallystick.node.engines import FakeEngine
from tallystick.protocol import ETH, ETH_INFO, Prices, cost_of, format_amount

from tests.kit.chain import key_hex, open_eth_channel, register_and_list
from tests.kit.net import ThreadServer
from tests.kit.node import RawChannel

pytestmark = pytest.mark.chain

MODEL = "fake-model"
PRICES = Prices(input_per_m=10**12, output_per_m=2 * 10**12)
DEPOSIT = 10**17


@pytest.fixture
def served(deployment: Any, accounts: Any, anvil: Any, tmp_path: Any, caplog: Any) -> Iterator[Any]:
    """A node on anvil that served three paid requests on one channel and claimed them."""
    import logging

    caplog.set_level(logging.INFO, logger="tallystick.node")  # the settlement's lines
    provider, client = accounts.provider, accounts.client
    engine = FakeEngine(reply="Paid per token, settled on chain.")
    register_and_list(deployment, provider, "http://127.0.0.1:0", MODEL, PRICES)
    cid = open_eth_channel(deployment, client, provider, MODEL, PRICES, DEPOSIT)
    settings = Settings(
        rpc=anvil.url,
        escrow=deployment.escrow.address,
        registry=deployment.registry.address,
        key=key_hex(provider),
        db=tmp_path / "node.db",
        settle_interval=0.5,
        poll_interval=0.2,
        claim_gas_multiple=0,
        min_claim={ETH: 1},
    )
    raw = RawChannel(client, deployment.escrow.domain, cid)
    with ThreadServer(create_app(settings, engine=engine)) as server:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            receipt, body = None, {}
            for question in ("What is a tally stick?", "Who kept the halves?", "Why split?"):
                r = raw.post(
                    http,
                    "/v1/chat/completions",
                    {"model": MODEL, "messages": [{"role": "user", "content": question}]},
                    receipt,
                )
                assert r.status_code == 200, r.text
                body = r.json()
                receipt = raw.countersign(body, delivered=False)
            assert http.post("/v1/tally/receipts", json=receipt).status_code == 200
        record = body["tallystick"]["record"]
        yield server, cid, (record["inputTokens"], record["outputTokens"])


def test_the_dashboard_shows_earnings_channels_claims_and_speed(
    served: Any, deployment: Any, accounts: Any, chromium: Any, screenshot: Any
) -> None:
    server, cid, (inp, out) = served
    earned = format_amount(cost_of(inp, out, PRICES), ETH_INFO)
    page = chromium.new_page(viewport={"width": 1400, "height": 900})
    # The worker claims the countersigned receipt within a pass or two: reload until the
    # page shows the claim (the page itself re-reads every 15 s).
    for _ in range(40):
        page.goto(server.url + "/dashboard")
        page.wait_for_selector("body[data-loaded='1']", timeout=10_000)
        if "confirmed" in page.inner_text("#claims") or "final" in page.inner_text("#claims"):
            break
        page.wait_for_timeout(250)
    shot = screenshot(page, "node-dashboard")
    assert shot.stat().st_size > 10_000

    totals = page.inner_text("#totals")
    assert earned in totals and "3 requests" in totals and f"{inp} in / {out} out" in totals
    channels = page.inner_text("#channels")
    assert "0x" + cid.hex() in channels  # whole, never cut
    assert accounts.client.address in channels
    assert format_amount(DEPOSIT, ETH_INFO) in channels
    assert f"{inp}/{out}" in channels
    claims = page.inner_text("#claims")
    paid = deployment.escrow.get_channel(cid).paid
    assert paid == cost_of(inp, out, PRICES)
    assert format_amount(paid, ETH_INFO) in claims
    assert "no disputes" in page.inner_text("#disputes")
    bars = page.query_selector_all("#earnings-chart rect.bar[data-model='fake-model']")
    shown = sum(float(b.get_attribute("data-value")) for b in bars)
    assert bars and abs(shown - paid / 1e18) < 1e-12
    tps = page.inner_text("[data-testid='speed-tokenss'] .v")
    assert float(tps) > 0
    assert float(page.inner_text("[data-testid='speed-TTFT'] .v")) > 0
    assert len(page.query_selector_all("#speed-chart polyline.line")) == 3


def test_a_bad_window_is_an_openai_error_not_a_trace(served: Any) -> None:
    server, _, _ = served
    r = httpx.get(server.url + "/dashboard/data", params={"since": "yesterday-ish"})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "since"
    assert "duration" in r.json()["error"]["message"]


def test_earnings_command_reports_per_model_and_token(
    served: Any, deployment: Any, anvil: Any, tmp_path: Any
) -> None:
    import csv
    import json

    from click.testing import CliRunner
    from tallystick.node.cli import main

    _, _, (inp, out) = served
    args = ["--rpc", anvil.url, "--escrow", deployment.escrow.address]
    args += ["--registry", deployment.registry.address, "--db", str(tmp_path / "node.db")]
    cost = cost_of(inp, out, PRICES)

    r = CliRunner().invoke(main, ["earnings", "--since", "1h", "--json", *args])
    assert r.exit_code == 0, r.output
    (row,) = json.loads(r.output)["earnings"]
    assert (row["model"], row["symbol"], row["requests"]) == (MODEL, "ETH", 3)
    assert (row["input_tokens"], row["output_tokens"]) == (inp, out)
    assert row["amount_base_units"] == str(cost)

    r = CliRunner().invoke(
        main, ["earnings", "--since", "2020-01-01", "--by", "day", "--csv", *args]
    )
    assert r.exit_code == 0, r.output
    (line,) = list(csv.DictReader(r.output.splitlines()))
    assert line["amount"] == format_amount(cost, ETH_INFO) and line["start"].endswith("T00:00:00Z")

    r = CliRunner().invoke(main, ["earnings", *args])
    assert r.exit_code == 0 and format_amount(cost, ETH_INFO) in r.output and MODEL in r.output

    r = CliRunner().invoke(main, ["earnings", "--since", "tuesday", *args])
    assert r.exit_code == 2 and "duration" in r.output and "Traceback" not in r.output


_PROMQL_WORDS = {
    "sum", "rate", "increase", "histogram_quantile", "by", "without", "avg", "max", "min",
}  # fmt: skip


def _metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (label matchers and ``by (...)`` removed)."""
    import re

    bare = re.sub(r"\{[^}]*\}", "", expr)
    bare = re.sub(r"\b(by|without)\s*\([^)]*\)", "", bare)
    bare = re.sub(r"\[[^\]]*\]", "", bare)
    words = re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", bare)
    return {w for w in words if w not in _PROMQL_WORDS}


def test_every_grafana_query_reads_a_metric_the_node_exports(served: Any, caplog: Any) -> None:
    import json
    import re
    from pathlib import Path

    server, _, (inp, out) = served
    board = json.loads((Path(__file__).parents[2] / "docs/grafana/tallystick.json").read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    assert len(exprs) >= 12
    # after the worker's claim, so the claim counters have a sample too
    for _ in range(100):
        text = httpx.get(server.url + "/metrics").text
        if 'tallystick_claims_total{outcome="confirmed"}' in text:
            break
        time.sleep(0.1)
    exported = set(re.findall(r"^([A-Za-z_:][A-Za-z0-9_:]*)[{ ]", text, re.M))
    # families with no sample yet (no RPC failure happened) are exported all the same
    exported |= set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    exported |= {f"{n}_total" for n in re.findall(r"^# TYPE (\S+) counter", text, re.M)}
    missing = {(e, n) for e in exprs for n in _metric_names(e) if n not in exported}
    assert not missing
    assert 'tallystick_revenue_total{model_name="fake-model",token="0x' in text
    assert 'tallystick_earnings_claimed{token="0x' in text
    assert "_created" not in text
    # the settlement pass said what it claimed, in ETH
    claimed = format_amount(cost_of(inp, out, PRICES), ETH_INFO)
    assert any(f"claimed {claimed} over 1 receipt" in r.getMessage() for r in caplog.records)


def test_rpc_error_answers_are_counted_by_code(served: Any) -> None:
    import re

    server, _, _ = served
    node = server.server.config.app.state.node
    provider = node.chain.escrow.w3.provider
    answer = provider.make_request("eth_noSuchMethod", [])  # anvil: -32601 method not found
    assert answer["error"]["code"] == -32601
    text = httpx.get(server.url + "/metrics").text
    found = re.search(
        r'tallystick_rpc_errors_total\{code="-32601",rpc="0:127\.0\.0\.1:\d+"\} (\S+)', text
    )
    assert found and float(found[1]) >= 1.0, text[-2000:]
