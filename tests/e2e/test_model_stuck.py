"""SmolLM2 behind ``tallystick-node serve`` (a real process) on anvil, with the SDK and ``openai``:
a plain request the client gave up on really stops the engine, and streams follow OpenAI's
``stream_options.include_usage`` rule while the bill still reaches the SDK (docs/protocol.md §6,
§8; DESIGN.md guarantee 8).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from tallystick.client import Chain, NodeUnavailable, Tallystick, Wallet
from tallystick.node.cli import main as node_cli
from tallystick.protocol import Prices, cost_of

from tests.kit.net import free_port
from tests.kit.node import wait_healthy

pytestmark = [pytest.mark.model, pytest.mark.chain]

NAME = "SmolLM2-135M-Instruct"
PRICES = Prices(input_per_m=10**12, output_per_m=3 * 10**12)
NODE = Path(sys.executable).parent / "tallystick-node"
COUNT = [{"role": "user", "content": "Count from 1 to 1000, one number per line."}]
HELLO = [{"role": "user", "content": "Say hello in five words."}]


@dataclass
class Served:
    url: str
    process: subprocess.Popen[bytes]
    client: Tallystick
    channel_id: bytes
    make_client: Any

    def running(self) -> int:
        return int(httpx.get(self.url + "/health", timeout=5).json()["engine"]["running"])


@pytest.fixture
def served(
    deployment: Any,
    anvil: Any,
    accounts: Any,
    w3: Any,
    model_dir: Path,
    model_file: str,
    tmp_path: Path,
) -> Iterator[Served]:
    """SmolLM2 registered, listed and served by the CLI; a client with an open channel."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    key = "0x" + accounts.provider.key.hex().removeprefix("0x")
    args = ["--rpc", anvil.url, "--escrow", deployment.escrow.address]
    args += ["--registry", deployment.registry.address, "--db", str(tmp_path / "node.db")]
    env = {**os.environ, "TALLYSTICK_NODE_KEY": key, "PYTHONUNBUFFERED": "1"}
    runner = CliRunner(env={"TALLYSTICK_NODE_KEY": key})
    out = runner.invoke(node_cli, ["register", *args, "--endpoint", url])
    assert out.exit_code == 0, out.output
    model = str(model_dir / model_file)
    prices = ["--input-price", str(PRICES.input_per_m)]
    prices += ["--output-price", str(PRICES.output_per_m)]
    out = runner.invoke(node_cli, ["list-model", *args, "--model", model, *prices])
    assert out.exit_code == 0, out.output
    log = (tmp_path / "node.log").open("wb")
    cmd = [str(NODE), "serve", *args, "--model", model, "--port", str(port)]
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    made: list[Tallystick] = []

    def make_client(**kwargs: Any) -> Tallystick:
        chain = Chain(w3, deployment.registry.address, deployment.escrow.address)
        client = Tallystick(Wallet(accounts.client), tmp_path / "client.db", chain=chain, **kwargs)
        made.append(client)
        return client

    try:
        wait_healthy(url, process, timeout=300)
        client = make_client()
        info = client.channels.open(NAME, 10**17)
        yield Served(url, process, client, info.channel_id, make_client)
    finally:
        for c in made:
            c.close()
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()
    assert "Traceback" not in (tmp_path / "node.log").read_text()


def _close_pays_exactly_the_bill(s: Served, client: Tallystick) -> None:
    tally = client.store.tally(s.channel_id)
    closed = client.channels.close(s.channel_id)
    assert closed.paid == cost_of(tally.input_tokens, tally.output_tokens, PRICES) > 0


def test_a_plain_request_the_client_gave_up_on_stops_smollm2_and_the_channel_goes_on(
    served: Served,
) -> None:
    s = served
    impatient = s.make_client(timeout=2.0)
    with pytest.raises(NodeUnavailable, match="timed out"):
        impatient.chat.completions.create(
            model=NAME, messages=COUNT, max_tokens=3000, temperature=0
        )
    gave_up = time.monotonic()
    # 3000 ids would take minutes on this CPU; the engine frees the slot at its next step.
    while s.running() and time.monotonic() - gave_up < 5:
        time.sleep(0.05)
    assert s.running() == 0, "the node kept generating for a client that had left"
    impatient.close()

    started = time.monotonic()
    reply = s.client.chat.completions.create(model=NAME, messages=HELLO, max_tokens=8)
    assert time.monotonic() - started < 10  # one short generation, no wait loop, no 402
    assert reply.tally.record.record.seq == 2
    first = s.client.bill(s.channel_id)[0]
    assert first.completion_tokens == 0 and first.prompt_tokens > 0  # the prompt only (§6)
    assert s.client.store.disputes() == []
    _close_pays_exactly_the_bill(s, s.client)


def test_streams_work_with_the_openai_sdk_with_and_without_include_usage_and_are_billed(
    served: Served,
) -> None:
    s = served
    oa = s.client.openai(s.channel_id)
    # Without include_usage: no chunk with empty choices, so the commonest loop works.
    stream = oa.chat.completions.create(
        model=NAME, messages=HELLO, max_tokens=12, temperature=0, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream)
    assert text
    seq1 = s.client.bill(s.channel_id)[-1]
    assert seq1.seq == 1 and seq1.completion_tokens >= 1
    assert s.client.store.tally(s.channel_id).receipt is not None  # countersigned

    # With include_usage: OpenAI's final usage-only chunk (empty choices), and only then.
    stream = oa.chat.completions.create(
        model=NAME,
        messages=HELLO,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    *content, last = chunks
    assert last.choices == [] and last.usage is not None
    assert all(c.choices and c.usage is None for c in content)
    assert "".join(c.choices[0].delta.content or "" for c in content) == text
    seq2 = s.client.bill(s.channel_id)[-1]
    assert seq2.seq == 2 and last.usage.completion_tokens == seq2.completion_tokens

    # The Tallystick SDK's own streams: the verified bill in both modes.
    for options in (None, {"include_usage": True}):
        tallied = s.client.chat.completions.create(
            model=NAME, messages=HELLO, max_tokens=12, stream=True, stream_options=options
        )
        got = "".join(c.choices[0].delta.content or "" for c in tallied if c.choices)
        assert got and tallied.tally is not None
        assert tallied.tally.record.record.completion_tokens >= 1
    assert [line.seq for line in s.client.bill(s.channel_id)] == [1, 2, 3, 4]
    assert s.client.store.disputes() == []
    _close_pays_exactly_the_bill(s, s.client)
