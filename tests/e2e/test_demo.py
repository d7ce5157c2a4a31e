"""``tallystick demo`` end to end: real anvil, real contracts, real node subprocess, real model.

One run to the end (the bill must add up against the chain) and one interrupted with SIGINT
while the node loads the model (nothing it started may survive).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.model, pytest.mark.chain]

ROOT = Path(__file__).resolve().parents[2]
PIDS = re.compile(r"(anvil|tallystick-node serve) pid (\d+)")


def _demo_cmd(*args: str) -> list[str]:
    script = Path(sys.executable).parent / "tallystick"
    fallback = [sys.executable, "-c", "from tallystick.client.cli import main; main()"]
    base = [str(script)] if script.exists() else fallback
    return [*base, "demo", *args]


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _env() -> dict[str, str]:
    # Wide lines so nothing we grep for is wrapped; no colour codes in the captured output.
    return {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}


def _started(output: str) -> dict[str, int]:
    return {name: int(pid) for name, pid in PIDS.findall(output)}


def _live_group_members(pgid: int) -> list[str]:
    """Processes of group ``pgid`` that are still running (zombies do not count)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces, so split after the last ")".
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(f"{stat.parent.name} {text[: text.rindex(')') + 1]}")
    return alive


def _assert_all_stopped(started: dict[str, int]) -> None:
    deadline = time.monotonic() + 5
    left = {name: _live_group_members(pid) for name, pid in started.items()}
    while any(left.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
        left = {name: _live_group_members(pid) for name, pid in started.items()}
    assert not any(left.values()), f"processes left running: {left}"


@pytest.mark.timeout(1200)
def test_demo_runs_to_a_bill_that_adds_up(model_dir: Path) -> None:
    done = subprocess.run(
        _demo_cmd("--prompts", "2"),
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=1150,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "The bill adds up: 3 requests cost" in output  # 2, then 1 to the cheating node
    assert output.count("audit seq") == 3 and "FAIL" in output  # proof of the model (6b)
    assert "the cheat is gone" in output
    assert "The plain openai SDK paid through Tallystick" in output  # the gateway step
    assert "gateway channel closed cooperatively" in output
    assert "✗" not in output  # every check of the bill passed
    for step in ("escrow.open", "escrow.claimMany", "escrow.closeCooperative", "withdraw"):
        assert step in output, f"{step} missing from the gas table"
    started = _started(output)
    assert set(started) == {"anvil", "tallystick-node serve"}
    _assert_all_stopped(started)


@pytest.mark.timeout(300)
def test_sigint_midway_stops_anvil_and_the_node(model_dir: Path) -> None:
    proc = subprocess.Popen(
        _demo_cmd("--prompts", "2"),
        cwd=ROOT,
        env=_env(),
        # Ctrl-C as at a terminal: a run started in the background by a non-interactive shell
        # (`make test &`) inherits SIGINT ignored, and Python then keeps ignoring it.
        preexec_fn=_default_sigint,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    seen = ""
    try:
        while "tallystick-node serve" not in _started(seen):
            line = proc.stdout.readline()
            assert line, f"the demo ended before starting the node:\n{seen}"
            seen += line
        time.sleep(2)  # the node is loading the model now
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = seen + rest
    assert proc.returncode == 130, output[-3000:]
    assert "interrupted" in output and "stopped: node" in output
    started = _started(output)
    assert set(started) == {"anvil", "tallystick-node serve"}
    _assert_all_stopped(started)


@pytest.mark.timeout(1200)
def test_keep_leaves_the_node_with_the_listed_weights(model_dir: Path) -> None:
    """--keep leaves a node for the README's quickstarts: not the TEST-ONLY perturbed one (it
    answered "L'Étoile, la Marseur, …" to "What is the capital of France?")."""
    done = subprocess.run(
        _demo_cmd("--prompts", "1", "--keep"),
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=1150,
        check=False,
    )
    output = done.stdout + done.stderr
    started = _started(output)  # the last node started wins
    try:
        assert done.returncode == 0, output[-4000:]
        assert "the cheat is gone" in output
        cmdline = Path(f"/proc/{started['tallystick-node serve']}/cmdline").read_bytes()
        assert b"--test-only-perturb-weights" not in cmdline, cmdline
    finally:
        for pid in started.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
    _assert_all_stopped(started)
