"""Processes of a local devnet: finding the binaries, process groups, anvil, a node, health.

Every process starts in its own process group (``start_new_session``), so stopping it stops
everything it spawned (the ``anvil`` npm shim and its native binary; the node and its
threads). ``Processes`` keeps them and stops the newest first (a node before its chain).
Nothing here imports the node's heavy dependencies: ``node_command`` only checks they exist.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from tallystick.protocol import TallystickError

__all__ = [
    "CHAIN_ID",
    "MNEMONIC",
    "MODEL_FILE",
    "MODEL_NAME",
    "Anvil",
    "DevnetError",
    "Node",
    "Proc",
    "Processes",
    "find_anvil",
    "find_model",
    "free_port",
    "node_command",
    "node_progress",
    "spawn_node",
    "start_anvil",
    "start_node",
    "stop_group",
    "wait_http",
]

MODEL_NAME = "SmolLM2-135M-Instruct"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MNEMONIC = "test test test test test test test test test test test junk"  # anvil's and hardhat's
CHAIN_ID = 31337


class DevnetError(TallystickError):
    """Something the devnet needs is missing or failed; the message says what to do."""


# ---------------------------------------------------------------------------- finding things


def package_root() -> Path:
    """The checkout (or editable install) this package runs from: devnet/ sits one level below."""
    return Path(__file__).resolve().parents[1]


def find_model(given: Path | None = None) -> Path:
    """The GGUF: ``given``, ``$TALLYSTICK_MODEL``, then ./.models, the checkout, ~/.cache."""
    if given is not None:
        path = given.expanduser()
        if path.is_dir():
            path = path / MODEL_FILE
        if not path.is_file():
            raise DevnetError(f"--model {given}: no such model file")
        return path
    env = os.environ.get("TALLYSTICK_MODEL")
    candidates = [Path(env).expanduser()] if env else []
    if candidates and candidates[0].is_dir():  # a folder holding the model file
        candidates[0] = candidates[0] / MODEL_FILE
    rel = Path(".models") / MODEL_NAME / MODEL_FILE
    candidates += [Path.cwd() / rel, package_root() / rel]
    candidates.append(Path.home() / ".cache" / "tallystick" / "models" / MODEL_NAME / MODEL_FILE)
    for path in candidates:
        if path.is_file():
            return path
    raise DevnetError(
        f"the model {MODEL_FILE} was not found: run `tallystick-node model fetch` (or `make "
        "model` in the repository), or pass --model PATH or set TALLYSTICK_MODEL (a "
        "SmolLM2-135M-Instruct .gguf file or its folder)"
    )


def find_anvil() -> str:
    """anvil from ./node_modules, the checkout's node_modules, or PATH."""
    for root in (Path.cwd(), package_root()):
        candidate = root / "node_modules" / ".bin" / "anvil"
        if candidate.exists():
            return str(candidate)
    found = shutil.which("anvil")
    if found is None:
        raise DevnetError(
            "anvil (a local Ethereum chain) was not found: run `make setup` in the repository, "
            "`npm install @foundry-rs/anvil`, or install Foundry (https://getfoundry.sh); "
            "or pass --rpc URL of a running dev chain (e.g. `npx hardhat node`)"
        )
    return found


def node_command() -> list[str]:
    """How to run ``tallystick-node`` from this Python environment (its extras checked)."""
    import importlib.util

    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("uvicorn") is None:
        raise DevnetError(
            "the provider node needs its extras: pip install 'tallystick[node]' "
            "(torch, transformers, fastapi, uvicorn)"
        )
    script = Path(sys.executable).parent / "tallystick-node"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from tallystick.node.cli import main; main()"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------- process groups


@dataclass
class Proc:
    """A child in a process group of its own; its output goes to ``log`` (or nowhere)."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path | None

    def tail(self, lines: int = 15) -> str:
        """The last ``lines`` lines of its log ('' without one)."""
        if self.log is None:
            return ""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.replace("\r", "\n").splitlines()[-lines:])


@dataclass
class Processes:
    """Children in their own process groups, stopped newest first; a context manager."""

    procs: list[Proc] = field(default_factory=list)

    def start(
        self,
        name: str,
        cmd: Sequence[str],
        log: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Proc:
        """Start ``cmd`` in a new process group, stdout and stderr into ``log``."""
        with contextlib.ExitStack() as stack:
            out = stack.enter_context(log.open("ab")) if log else subprocess.DEVNULL
            popen = subprocess.Popen(
                list(cmd),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                start_new_session=True,  # own group: Ctrl-C reaches us, and we stop it in order
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        """Stop one child (and its group) and forget it."""
        stop_group(proc.popen)
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> list[str]:
        """Stop the newest first (the node before the chain it uses); names of those stopped."""
        stopped = []
        while self.procs:
            proc = self.procs.pop()
            stop_group(proc.popen)
            stopped.append(f"{proc.name} (pid {proc.popen.pid})")
        return stopped

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_all()


def stop_group(popen: subprocess.Popen[bytes], grace_s: float = 8.0) -> None:
    """SIGTERM the child's group, then SIGKILL what is left after ``grace_s``."""
    pgid = popen.pid  # start_new_session: the leader's pid is the group id
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        popen.wait(timeout=grace_s)
    # The leader may be gone while a child it spawned (anvil's native binary) lingers.
    deadline = time.monotonic() + 2.0
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        popen.wait(timeout=5)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------------------- health


def wait_http(
    url: str,
    proc: Proc | None,
    timeout_s: float,
    what: str,
    *,
    method: str = "GET",
    json_body: object = None,
    on_wait: Callable[[], None] | None = None,
    interval_s: float = 0.25,
) -> None:
    """Poll ``url`` until it answers 2xx; ``DevnetError`` when ``proc`` exits or time runs out.

    ``on_wait`` runs between polls (a progress bar reading the log, for instance).
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            where = f"; see {proc.log}" if proc.log else ""
            raise DevnetError(f"{what} exited with code {proc.popen.returncode}{where}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.request(method, url, json=json_body, timeout=2.0).is_success:
                return
        if on_wait is not None:
            on_wait()
        time.sleep(interval_s)
    raise DevnetError(f"{what} did not answer on {url} within {timeout_s:.0f} s")


# ---------------------------------------------------------------------------- anvil


@dataclass(frozen=True)
class Anvil:
    """A running anvil: its RPC URL, chain id, mnemonic and process."""

    url: str
    chain_id: int
    mnemonic: str
    proc: Proc


def start_anvil(
    procs: Processes,
    *,
    log: Path | None = None,
    port: int | None = None,
    chain_id: int = CHAIN_ID,
    mnemonic: str = MNEMONIC,
    accounts: int | None = None,
    gas_limit: int | None = None,
    timeout_s: float = 30.0,
) -> Anvil:
    """Start anvil on ``port`` (default a free one) and wait until it answers ``eth_chainId``."""
    port = port or free_port()
    cmd = [find_anvil(), "--port", str(port), "--chain-id", str(chain_id), "--mnemonic", mnemonic]
    if accounts is not None:
        cmd += ["--accounts", str(accounts)]
    if gas_limit is not None:
        cmd += ["--gas-limit", str(gas_limit)]
    if log is None:
        cmd.append("--silent")
    proc = procs.start("anvil", cmd, log)
    url = f"http://127.0.0.1:{port}"
    body = {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}
    wait_http(url, proc, timeout_s, "anvil", method="POST", json_body=body, interval_s=0.05)
    return Anvil(url, chain_id, mnemonic, proc)


# ---------------------------------------------------------------------------- a node


@dataclass(frozen=True)
class Node:
    """A running ``tallystick-node serve``: its URL and process."""

    url: str
    proc: Proc


def spawn_node(
    procs: Processes,
    *,
    rpc: str,
    escrow: str,
    registry: str,
    db: Path | None,
    key: str,
    port: int | None = None,
    args: Sequence[str] = (),
    command: Sequence[str] | None = None,
    log: Path | None = None,
    env: Mapping[str, str] | None = None,
    name: str = "node",
) -> Node:
    """Start ``tallystick-node serve`` on the given chain without waiting for it.

    ``key`` travels in the environment, not argv, so ``ps`` does not show it. ``db`` is the
    SQLite ledger (None: ``args`` name one, ``--ledger postgresql://…``). ``args`` adds flags
    (the model, the engine, settlement); ``command`` replaces ``node_command()`` (a test's
    fake-engine script, for instance).
    """
    port = port or free_port()
    cmd = [*(command or node_command()), "serve"]
    cmd += ["--rpc", rpc, "--escrow", escrow, "--registry", registry]
    cmd += ["--port", str(port), *(["--db", str(db)] if db is not None else []), *args]
    environ = {**os.environ, **(env or {}), "TALLYSTICK_NODE_KEY": key, "PYTHONUNBUFFERED": "1"}
    return Node(f"http://127.0.0.1:{port}", procs.start(name, cmd, log, env=environ))


def start_node(
    procs: Processes,
    *,
    timeout_s: float = 900.0,
    health: str = "/health",
    on_wait: Callable[[], None] | None = None,
    **spawn: Any,
) -> Node:
    """``spawn_node(procs, **spawn)``, then wait until it answers ``health``.

    A node that exits or does not answer in ``timeout_s`` raises ``DevnetError``; it stays in
    ``procs`` (whoever owns them stops it).
    """
    node = spawn_node(procs, **spawn)
    wait_http(node.url + health, node.proc, timeout_s, f"the {node.proc.name}", on_wait=on_wait)
    return node


_PROGRESS = re.compile(r"(\d+)/(\d+) \[")
_MSG = re.compile(r'msg="((?:[^"\\]|\\.)*)"')


def node_progress(log: Path) -> tuple[str, int | None, int | None]:
    """The node's latest log message and, while it dequantises, tensors done / total."""
    try:
        text = log.read_bytes()[-16_384:].decode(errors="replace")
    except OSError:
        return "starting the node process", None, None
    lines = [line for line in re.split(r"[\r\n]+", text) if line.strip()]
    for line in reversed(lines):
        progress = _PROGRESS.search(line)
        if progress and "msg=" not in line:
            label = line.split(":")[0].strip()[:60] or "loading"
            return label, int(progress.group(1)), int(progress.group(2))
        msg = _MSG.search(line)
        if msg:
            return json.loads(f'"{msg.group(1)}"')[:70], None, None
    return "starting the node process", None, None
