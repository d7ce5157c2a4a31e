"""``tallystick-node serve`` on llama.cpp, on anvil, driven by the client SDK (which verifies
every bill by the counting rule and countersigns it):

- ``--engine llamacpp``: the node runs ``llama-server`` itself (built by ``make llama``) on the
  real SmolLM2 GGUF, and stops it when it stops;
- ``--engine upstream`` in front of a ``llama-server`` a provider already runs.

Plain and streamed answers, an abandoned stream resolved by the interrupted-request rule on
the next request, and the cooperative close paying exactly the countersigned bill.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from tallystick.client import Chain, Tallystick, Wallet
from tallystick.node.cli import main
from tallystick.protocol import Prices, cost_of

from tests.kit.net import free_port, wait_http
from tests.kit.node import chain_args, wait_healthy

pytestmark = [pytest.mark.chain, pytest.mark.model]

NAME = "smol-llama"
PRICES = Prices(input_per_m=10**12, output_per_m=2 * 10**12)
SLOT_CTX = 1024
ASK = [{"role": "user", "content": "What is the capital of France?"}]
STORY = [{"role": "user", "content": "Tell me a long story about a dragon."}]


def _node_cmd() -> list[str]:
    script = Path(sys.executable).parent / "tallystick-node"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from tallystick.node.cli import main; main()"]


def _start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


def _list(args: list[str], gguf: str, endpoint: str) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["register", *args, "--endpoint", endpoint]).exit_code == 0
    listed = runner.invoke(
        main,
        [
            *("list-model", *args, "--model", gguf, "--model-name", NAME),
            *("--input-price", str(PRICES.input_per_m), "--output-price", str(PRICES.output_per_m)),
            *("--context-length", str(SLOT_CTX)),
        ],
    )
    assert listed.exit_code == 0, listed.output


def _client(deployment: Any, accounts: Any, w3: Any, store: Path) -> Tallystick:
    chain = Chain(w3, deployment.registry.address, deployment.escrow.address)
    return Tallystick(Wallet(accounts.client), store, chain=chain)


def _exercise(client: Tallystick) -> None:
    """Plain, streamed, abandoned, then the next request; the close pays the bill."""
    info = client.channels.open(NAME, 10**15)
    plain = client.chat.completions.create(model=NAME, messages=ASK, max_tokens=12, temperature=0)
    text = plain.choices[0].message.content
    assert text and plain.tally.completion_tokens <= 12
    stream = client.chat.completions.create(
        model=NAME, messages=ASK, max_tokens=12, temperature=0, stream=True
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed == text and stream.tally is not None
    assert stream.tally.completion_ids == plain.tally.completion_ids  # greedy, same ids
    # Abandon a long stream after a few chunks: the next request resolves it (§6).
    long = client.chat.completions.create(
        model=NAME, messages=STORY, max_tokens=400, temperature=0, stream=True
    )
    got = 0
    for chunk in long:
        if chunk.choices and chunk.choices[0].delta.content:
            got += 1
            if got == 3:
                break
    long.close()
    assert client.store.pending(info.channel_id) is not None
    after = client.chat.completions.create(model=NAME, messages=ASK, max_tokens=4, temperature=0)
    assert after.tally.record.record.seq == 4  # seq 3 (the abandoned one) was resolved first
    assert client.store.pending(info.channel_id) is None
    abandoned = client.bill(info)[2].record.record
    assert 3 <= abandoned.completion_tokens < 400  # what was sent, not what was asked
    tally = client.store.tally(info.channel_id)
    closed = client.channels.close(info.channel_id)
    assert closed.paid == cost_of(tally.input_tokens, tally.output_tokens, PRICES) > 0


def test_engine_llamacpp_serves_meters_and_stops_llama_server(
    llama_server_bin, model_dir, model_file, deployment, anvil, accounts, w3, tmp_path
) -> None:
    gguf = str(model_dir / model_file)
    args = chain_args(anvil.url, deployment, accounts.provider, tmp_path / "node.db")
    port = free_port()
    _list(args, gguf, f"http://127.0.0.1:{port}")
    cmd = [*_node_cmd(), "serve", *args, "--engine", "llamacpp", "--model", gguf]
    cmd += ["--model-name", NAME, "--port", str(port), "--max-batch", "2"]
    cmd += ["--llama-ctx", str(SLOT_CTX), "--llama-threads", "1"]
    cmd += ["--llama-server", str(llama_server_bin)]
    log = tmp_path / "node.log"
    node = _start(cmd, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, node, timeout=180)
        servers = _children(node.pid)
        assert len(servers) == 1 and _alive(servers[0])  # the node's own llama-server
        model = httpx.get(f"{url}/v1/models").json()["data"][0]
        assert model["context_length"] == SLOT_CTX
        with _client(deployment, accounts, w3, tmp_path / "c.db") as client:
            _exercise(client)
    finally:
        code = _stop(node)
    output = log.read_text()
    assert code == 0, output
    assert "waiting for llama-server" in output or "llama-server ready" in output
    assert "Traceback" not in output
    deadline = time.monotonic() + 10
    while _alive(servers[0]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(servers[0])  # stopped with the node


@pytest.fixture
def bare_llama(
    llama_server_bin: Path, model_dir: Path, model_file: str, tmp_path: Path
) -> Iterator[str]:
    port = free_port()
    cmd = [str(llama_server_bin), "-m", str(model_dir / model_file), "--port", str(port)]
    cmd += ["--host", "127.0.0.1", "--parallel", "2", "--ctx-size", str(2 * SLOT_CTX)]
    cmd += ["--threads", "1"]
    proc = _start(cmd, tmp_path / "llama.log")
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "llama.log").read_text()[-2000:]
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_upstream_in_front_of_a_running_llama_server(
    bare_llama, model_dir, model_file, deployment, anvil, accounts, w3, tmp_path
) -> None:
    gguf = str(model_dir / model_file)
    args = chain_args(anvil.url, deployment, accounts.provider, tmp_path / "node.db")
    port = free_port()
    _list(args, gguf, f"http://127.0.0.1:{port}")
    cmd = [*_node_cmd(), "serve", *args, "--engine", "upstream", "--upstream-url", bare_llama]
    cmd += ["--model", gguf, "--model-name", NAME, "--port", str(port)]
    log = tmp_path / "node.log"
    node = _start(cmd, log)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", node, timeout=120)
        with _client(deployment, accounts, w3, tmp_path / "c.db") as client:
            _exercise(client)
    finally:
        code = _stop(node)
    output = log.read_text()
    assert code == 0 and "Traceback" not in output, output
    assert "llama.cpp native /completion" in output


@pytest.fixture
def bare_llama_cpp_python(
    llama_cpp_python: Any, model_dir: Path, model_file: str, tmp_path: Path
) -> Iterator[str]:
    """llama-cpp-python's ``python -m llama_cpp.server`` on the same build (``make llama``)."""
    port = free_port()
    gguf = str(model_dir / model_file)
    cmd, env = llama_cpp_python(gguf, port, n_ctx=SLOT_CTX, threads=1)
    log = tmp_path / "llama-py.log"
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/v1/models", proc, timeout=120, what="llama_cpp.server", log=log.read_text)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_upstream_in_front_of_llama_cpp_python_server(
    bare_llama_cpp_python, model_dir, model_file, deployment, anvil, accounts, w3, tmp_path
) -> None:
    gguf = str(model_dir / model_file)
    args = chain_args(anvil.url, deployment, accounts.provider, tmp_path / "node.db")
    port = free_port()
    _list(args, gguf, f"http://127.0.0.1:{port}")
    cmd = [*_node_cmd(), "serve", *args, "--engine", "upstream"]
    cmd += ["--upstream-url", bare_llama_cpp_python, "--model", gguf, "--model-name", NAME]
    cmd += ["--port", str(port), "--llama-ctx", str(SLOT_CTX)]  # its --n_ctx (it does not say)
    log = tmp_path / "node.log"
    node = _start(cmd, log)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", node, timeout=120)
        model = httpx.get(f"http://127.0.0.1:{port}/v1/models").json()["data"][0]
        assert model["context_length"] == SLOT_CTX
        with _client(deployment, accounts, w3, tmp_path / "c.db") as client:
            _exercise(client)
    finally:
        code = _stop(node)
    output = log.read_text()
    assert code == 0 and "Traceback" not in output, output
    assert "llama_cpp.server /v1/completions, re-tokenised" in output
