"""``tallystick demo``: the whole marketplace on a local chain, ending in a bill that adds up.

1. find the model and anvil; start anvil (or use ``--rpc``);
2. deploy ProviderRegistry, TallyEscrow and MockUSDC; fund a fresh provider and client;
3. start ``tallystick-node serve`` as a real subprocess; the provider registers its endpoint
   and lists the model with the tokenizer hash of the bundle the node serves;
4. the client discovers the provider on-chain, checks ``/v1/models``, opens a USDC channel;
5. a few verified, countersigned chat requests (one streamed);
6. the node settles with ``claimMany`` (``tallystick-node settle``), the client closes
   cooperatively, the provider withdraws;
7. the bill: requests, gas per transaction, balances; the demo checks against the chain that
   it adds up and exits 1 when it does not.

Every process it starts runs in its own process group and is stopped on success, failure,
Ctrl-C and SIGTERM (unless ``--keep``).
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
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import function_abi_to_4byte_selector
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from tallystick.protocol import (
    Deployment,
    Prices,
    TallystickError,
    TokenizerBundle,
    connect,
    cost_of,
    deploy,
    model_hash,
    model_id,
    recover_receipt_signer,
    recover_usage_record_signer,
)
from web3 import Web3

from ._chain import Chain
from ._client import Tallystick
from ._store import ChannelInfo
from ._wallet import Wallet

__all__ = ["DemoError", "DemoOptions", "run_demo"]

MODEL_NAME = "SmolLM2-135M-Instruct"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MNEMONIC = "test test test test test test test test test test test junk"  # anvil's and hardhat's
USDC = 10**6  # MockUSDC has 6 decimals
# 50 and 150 USDC per million tokens: dear, so that a 40-token request costs a visible amount
# in 6-decimal base units (50 and 150 units per token) instead of rounding to almost nothing.
PRICES = Prices(input_per_m=50 * USDC, output_per_m=150 * USDC)
DEPOSIT = 1 * USDC
CLIENT_USDC = 100 * USDC
GAS_ETH = 10**18  # each fresh account gets 1 ETH for gas
CHALLENGE_PERIOD = 3600
MAX_TOKENS = 48
PROMPTS = (
    "What is the capital of France?",
    "Name three primary colours.",
    "Write a haiku about the sea.",
    "Give one tip for someone learning to code.",
)
NODE_START_TIMEOUT_S = 900.0  # a loaded 2-core machine needs minutes to dequantise the GGUF
EXIT_OK, EXIT_FAIL, EXIT_INTERRUPTED = 0, 1, 130


class DemoError(TallystickError):
    """Something the demo needs is missing or failed; the message says what to do."""


class _Stop(KeyboardInterrupt):
    """SIGTERM/SIGHUP: unwind like Ctrl-C so every ``finally`` runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum  # the shell's convention for "killed by signal N"


@dataclass(frozen=True)
class DemoOptions:
    """The flags of ``tallystick demo``."""

    rpc: str | None = None
    deployer_key: str | None = None
    prompts: int = 3
    stream: bool = True
    keep: bool = False
    model: Path | None = None


# ---------------------------------------------------------------------------- finding things


def _package_root() -> Path:
    # An editable install or a checkout: client/_demo.py sits one level below the repo root.
    return Path(__file__).resolve().parents[1]


def find_model(given: Path | None) -> Path:
    """The GGUF: ``--model``, ``$TALLYSTICK_MODEL``, then ./.models, the checkout, ~/.cache."""
    if given is not None:
        path = given.expanduser()
        if path.is_dir():
            path = path / MODEL_FILE
        if not path.is_file():
            raise DemoError(f"--model {given}: no such model file")
        return path
    env = os.environ.get("TALLYSTICK_MODEL")
    candidates = [Path(env).expanduser()] if env else []
    rel = Path(".models") / MODEL_NAME / MODEL_FILE
    candidates += [Path.cwd() / rel, _package_root() / rel]
    candidates.append(Path.home() / ".cache" / "tallystick" / "models" / MODEL_NAME / MODEL_FILE)
    for path in candidates:
        if path.is_file():
            return path
    raise DemoError(
        f"the model {MODEL_FILE} was not found: run `make model` in the repository, "
        "or pass --model PATH (a SmolLM2-135M-Instruct .gguf file or folder)"
    )


def find_anvil() -> str:
    """anvil from ./node_modules, the checkout's node_modules, or PATH."""
    for root in (Path.cwd(), _package_root()):
        candidate = root / "node_modules" / ".bin" / "anvil"
        if candidate.exists():
            return str(candidate)
    found = shutil.which("anvil")
    if found is None:
        raise DemoError(
            "anvil (a local Ethereum chain) was not found: run `make setup` in the repository, "
            "`npm install @foundry-rs/anvil`, or install Foundry (https://getfoundry.sh); "
            "or pass --rpc URL of a running dev chain (e.g. `npx hardhat node`)"
        )
    return found


def node_command() -> list[str]:
    """How to run ``tallystick-node`` from this Python environment."""
    import importlib.util

    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("uvicorn") is None:
        raise DemoError(
            "the provider node needs its extras: pip install 'tallystick[node]' "
            "(torch, transformers, fastapi, uvicorn)"
        )
    script = Path(sys.executable).parent / "tallystick-node"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from tallystick.node.cli import main; main()"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------- processes


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


@dataclass
class Processes:
    """Children in their own process groups, so stopping one stops everything it spawned."""

    procs: list[_Proc] = field(default_factory=list)

    def start(
        self, name: str, cmd: list[str], log: Path, env: dict[str, str] | None = None
    ) -> _Proc:
        with log.open("wb") as out:
            popen = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # own group: Ctrl-C reaches us, and we stop it in order
            )
        proc = _Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> list[str]:
        """Stop the newest first (the node before the chain it uses); names of those stopped."""
        stopped = []
        while self.procs:
            proc = self.procs.pop()
            _stop_group(proc.popen)
            stopped.append(f"{proc.name} (pid {proc.popen.pid})")
        return stopped


def _stop_group(popen: subprocess.Popen[bytes], grace_s: float = 8.0) -> None:
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


@contextlib.contextmanager
def _unwind_on_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP unwind the stack like Ctrl-C, so the processes are stopped."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise _Stop(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# ---------------------------------------------------------------------------- the run


@dataclass
class _Run:
    """State shared by the steps of one demo run."""

    options: DemoOptions
    console: Console
    workdir: Path
    procs: Processes
    model: Path = Path()
    rpc: str = ""
    w3: Web3 | None = None
    deployer: LocalAccount | None = None
    provider: LocalAccount = field(default_factory=Account.create)
    client: LocalAccount = field(default_factory=Account.create)
    deployment: Deployment | None = None
    start_block: int = 0
    endpoint: str = ""
    channel: ChannelInfo | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    balances: dict[str, dict[str, int]] = field(default_factory=dict)
    events: dict[str, Any] = field(default_factory=dict)
    pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1))
    context_length: Future[int] = field(default_factory=Future)

    @property
    def d(self) -> Deployment:
        assert self.deployment is not None
        return self.deployment

    @property
    def web3(self) -> Web3:
        assert self.w3 is not None
        return self.w3

    def role(self, address: str | None) -> str:
        names = {
            self.provider.address.lower(): "provider",
            self.client.address.lower(): "client",
        }
        if self.deployer is not None:
            names[self.deployer.address.lower()] = "deployer"
        return names.get((address or "").lower(), _short(address or "?"))


def run_demo(options: DemoOptions, console: Console | None = None) -> int:
    """Run the demo; 0 only when the bill adds up on-chain."""
    console = console or Console(highlight=False)
    workdir = Path(tempfile.mkdtemp(prefix="tallystick-demo-"))
    run = _Run(options, console, workdir, Processes())
    code = EXIT_FAIL
    try:
        with _unwind_on_signals():
            code = _steps(run)
    except KeyboardInterrupt as exc:
        why = str(exc) or "Ctrl-C"
        console.print(f"\n[bold yellow]interrupted ({why})[/bold yellow]")
        code = exc.exit_code if isinstance(exc, _Stop) else EXIT_INTERRUPTED
    except TallystickError as exc:
        # escape(): the message is text, not markup ('tallystick[node]' would be swallowed)
        console.print(f"\n[bold red]demo failed:[/bold red] {escape(str(exc))}")
        _show_node_log_tail(run)
    finally:
        _finish(run, code)
    return code


def _steps(run: _Run) -> int:
    run.model = find_model(run.options.model)
    command = node_command()
    _step_chain(run)
    _step_deploy(run)
    _step_node(run, command)
    _step_list(run)
    with Tallystick(
        Wallet(run.client),
        run.workdir / "client.db",
        chain=Chain.connect(run.rpc, run.d.registry.address, run.d.escrow.address),
        audit_weights=run.model,  # the client holds the listed weights: it can audit
        audit_fraction=1.0,  # every request, for the demo (default 5%)
    ) as client:
        _step_open(run, client)
        _step_requests(run, client)
        _step_audits(run, command, client)
        _step_settle(run, command, client)
    code = _step_bill(run)
    return _step_gateway(run) if code == EXIT_OK else code


def _step_audits(run: _Run, command: list[str], client: Tallystick) -> None:
    from ._demo_audit import audit_step

    audit_step(run, command, client)


def _step_gateway(run: _Run) -> int:
    from ._gateway._demo import gateway_step

    run.console.rule("[bold]9 · Any OpenAI client: the same request through `tallystick gateway`")
    gateway_step(
        run.console,
        wallet=Wallet(run.client),
        chain=Chain.connect(run.rpc, run.d.registry.address, run.d.escrow.address),
        token=run.d.usdc.address,
        budget=DEPOSIT,
        store=run.workdir / "gateway.db",
        model=MODEL_NAME,
        prompt=PROMPTS[0],
        max_tokens=MAX_TOKENS,
        temperature=0.7,  # as the first request of step 6 (_ask)
        seed=0,
    )
    run.console.print(
        "[bold green]The plain openai SDK paid through Tallystick:[/bold green] same request, "
        "bill verified and countersigned by the gateway."
    )
    return EXIT_OK


def _finish(run: _Run, code: int) -> None:
    console = run.console
    run.pool.shutdown(wait=False, cancel_futures=True)
    if run.options.keep and code == EXIT_OK:
        _print_keep(run)
        return
    if run.procs.procs:
        with console.status("stopping the processes the demo started…"):
            stopped = run.procs.stop_all()
        console.print(f"stopped: {', '.join(stopped)}")
    if code == EXIT_FAIL and any(run.workdir.glob("*.log")):
        console.print(f"logs kept in {run.workdir}")
    else:
        shutil.rmtree(run.workdir, ignore_errors=True)


def _show_node_log_tail(run: _Run, lines: int = 8) -> None:
    log = run.workdir / "node.log"
    if log.exists():
        tail = log.read_text(errors="replace").replace("\r", "\n").splitlines()[-lines:]
        run.console.print(Panel("\n".join(tail), title="last lines of the node's log"))


# ---------------------------------------------------------------------------- 1. chain


def _step_chain(run: _Run) -> None:
    run.console.rule("[bold]1 · Local chain")
    if run.options.rpc:
        run.rpc = run.options.rpc
        run.w3 = connect(run.rpc)
        run.deployer = _deployer(run.options.deployer_key)
        run.console.print(f"using the chain at {run.rpc} (chain id {run.web3.eth.chain_id})")
    else:
        if run.options.deployer_key:
            raise DemoError("--deployer-key only goes with --rpc (anvil's dev accounts are used)")
        anvil = find_anvil()
        port = _free_port()
        run.rpc = f"http://127.0.0.1:{port}"
        cmd = [anvil, "--port", str(port), "--mnemonic", MNEMONIC, "--chain-id", "31337"]
        with run.console.status(f"starting anvil on port {port}…"):
            proc = run.procs.start("anvil", cmd, run.workdir / "anvil.log")
            run.w3 = _wait_for_chain(run.rpc, proc)
        run.deployer = _deployer(None)
        run.console.print(f"anvil pid {proc.popen.pid} at {run.rpc} (chain id 31337)")
    run.start_block = int(run.web3.eth.block_number)
    balance = run.web3.eth.get_balance(run.deployer.address)
    if balance < 3 * GAS_ETH:
        raise DemoError(
            f"the deployer {run.deployer.address} has {balance / 1e18:.4f} ETH; it needs 3 ETH "
            "(pass --deployer-key of a funded account)"
        )


def _deployer(key: str | None) -> LocalAccount:
    if key:
        try:
            return Account.from_key(key)
        except (ValueError, TypeError) as exc:
            raise DemoError("--deployer-key is not a valid private key (32 bytes of hex)") from exc
    Account.enable_unaudited_hdwallet_features()
    return Account.from_mnemonic(MNEMONIC, account_path="m/44'/60'/0'/0/0")


def _wait_for_chain(rpc: str, proc: _Proc, timeout_s: float = 30.0) -> Web3:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise DemoError(f"anvil exited with code {proc.popen.returncode}; see {proc.log}")
        with contextlib.suppress(TallystickError):
            return connect(rpc, timeout_s=2.0)
        time.sleep(0.05)
    raise DemoError(f"anvil did not answer on {rpc} within {timeout_s:.0f} s")


# ---------------------------------------------------------------------------- 2. contracts


def _step_deploy(run: _Run) -> None:
    run.console.rule("[bold]2 · Contracts and accounts")
    assert run.deployer is not None
    with run.console.status("deploying ProviderRegistry, TallyEscrow and MockUSDC…"):
        run.deployment = deploy(run.web3, run.deployer, challenge_period=CHALLENGE_PERIOD)
    table = Table("contract", "address", box=None)
    for name, address in run.d.addresses().items():
        table.add_row(name, address)
    run.console.print(table)
    with run.console.status("funding the provider and the client…"):
        for account in (run.provider, run.client):
            _send_eth(run.web3, run.deployer, account.address, GAS_ETH)
        run.d.usdc.mint(run.deployer, run.client.address, CLIENT_USDC)
    run.console.print(
        f"provider {run.provider.address}: 1 ETH for gas\n"
        f"client   {run.client.address}: 1 ETH for gas, {_usdc(CLIENT_USDC)} minted"
    )
    run.balances["start"] = _balances(run)


def _send_eth(w3: Web3, sender: LocalAccount, to: str, value: int) -> None:
    tx: dict[str, Any] = {
        "to": to,
        "value": value,
        "gas": 21_000,
        "gasPrice": w3.eth.gas_price,
        "nonce": w3.eth.get_transaction_count(sender.address, "pending"),
        "chainId": w3.eth.chain_id,
    }
    signed = sender.sign_transaction(tx)
    receipt = w3.eth.wait_for_transaction_receipt(
        w3.eth.send_raw_transaction(signed.raw_transaction), timeout=120, poll_latency=0.05
    )
    if receipt["status"] != 1:
        raise DemoError(f"funding {to} with ETH failed")


# ---------------------------------------------------------------------------- 3. node


def _step_node(run: _Run, command: list[str], extra: tuple[str, ...] | list[str] = ()) -> None:
    if not extra:
        run.console.rule("[bold]3 · Provider node")
    port = _free_port() if not run.endpoint else int(run.endpoint.rsplit(":", 1)[1])
    run.endpoint = f"http://127.0.0.1:{port}"
    cmd = [
        *command,
        "serve",
        *_chain_flags(run),
        "--model",
        str(run.model),
        "--port",
        str(port),
        "--settle-interval",
        "86400",  # the demo triggers settlement itself, with `tallystick-node settle`
        "--log-format",
        "kv",
        *extra,
    ]
    proc = run.procs.start("node", cmd, run.workdir / "node.log", env=_node_env(run))
    # Read while the node loads (it takes seconds to parse): the listing needs it.
    run.context_length = run.pool.submit(gguf_context_length, run.model)
    run.console.print(
        f"tallystick-node serve pid {proc.popen.pid} on {run.endpoint} "
        f"(model {run.model.name}, log {proc.log})"
    )
    _wait_for_node(run, proc)


def _chain_flags(run: _Run) -> list[str]:
    return [
        "--rpc",
        run.rpc,
        "--escrow",
        run.d.escrow.address,
        "--registry",
        run.d.registry.address,
        "--db",
        str(run.workdir / "node.db"),
    ]


def _node_env(run: _Run) -> dict[str, str]:
    # The key travels in the environment, not argv, so `ps` does not show it.
    return {**os.environ, "TALLYSTICK_NODE_KEY": _hex_key(run.provider), "PYTHONUNBUFFERED": "1"}


_PROGRESS = re.compile(r"(\d+)/(\d+) \[")
_MSG = re.compile(r'msg="((?:[^"\\]|\\.)*)"')


def _wait_for_node(run: _Run, proc: _Proc) -> None:
    """Poll /health, showing the node's own progress (its log) while it loads the model."""
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    )
    started = time.monotonic()
    with Progress(*columns, console=run.console, transient=True) as bar:
        task = bar.add_task("starting the node process", total=None)
        while not _healthy(run.endpoint):
            if proc.popen.poll() is not None:
                raise DemoError(f"the node exited with code {proc.popen.returncode}")
            if time.monotonic() - started > NODE_START_TIMEOUT_S:
                raise DemoError(f"the node did not answer /health in {NODE_START_TIMEOUT_S:.0f} s")
            stage, done, total = _node_progress(proc.log)
            bar.update(task, description=stage, completed=done or 0, total=total)
            time.sleep(0.25)
    health = httpx.get(run.endpoint + "/health", timeout=5).json()
    run.console.print(
        f"node ready in {time.monotonic() - started:.0f} s: serving {health.get('model')} "
        f"for provider {health.get('provider')}"
    )


def _healthy(endpoint: str) -> bool:
    try:
        return httpx.get(endpoint + "/health", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def _node_progress(log: Path) -> tuple[str, int | None, int | None]:
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


def gguf_context_length(path: Path) -> int:
    """``<arch>.context_length`` of a GGUF: what transformers makes max_position_embeddings."""
    from gguf import GGUFReader

    try:
        fields = GGUFReader(str(path)).fields
    except (OSError, ValueError) as exc:
        raise DemoError(f"{path} is not a readable GGUF file: {exc}") from exc
    for name, f in fields.items():
        if name.endswith(".context_length"):
            return int(f.parts[f.data[0]][0])
    raise DemoError(f"{path} has no context_length in its GGUF metadata")


# ---------------------------------------------------------------------------- 4. listing


def _step_list(run: _Run) -> None:
    run.console.rule("[bold]4 · Provider registers and lists the model")
    # Not /v1/models yet: the node caches "not listed" for 30 s, so asking before the listing
    # exists would make it advertise no prices to the client's check (see the report).
    url = f"{run.endpoint}/v1/tally/tokenizer/{MODEL_NAME}"
    raw = httpx.get(url, timeout=30).raise_for_status().content
    # The hash of the bundle exactly as the node serves it: what every client will recompute.
    tokenizer_hash = TokenizerBundle.from_bytes(raw).hash()
    context = run.context_length.result()
    metadata = json.dumps({"name": "tallystick demo provider"})
    run.d.registry.register(run.provider, run.endpoint, metadata)
    run.d.registry.list_model(
        run.provider,
        MODEL_NAME,
        PRICES,
        token=run.d.usdc.address,
        tokenizer_hash=tokenizer_hash,
        context_length=context,
    )
    weights = model_hash(run.model)  # the listing commits to the weights (protocol §10.1)
    run.d.registry.set_model_hash(run.provider, model_id(MODEL_NAME), weights)
    run.console.print(
        f"registered {_short(run.provider.address)} at {run.endpoint}\n"
        f"listed {MODEL_NAME}: {_usdc(PRICES.input_per_m)} per 1M input tokens, "
        f"{_usdc(PRICES.output_per_m)} per 1M output tokens "
        f"(= {PRICES.input_per_m // 10**6} and {PRICES.output_per_m // 10**6} base units per "
        f"token), context {context}, tokenizerHash {_short('0x' + tokenizer_hash.hex())}, "
        f"modelHash {_short('0x' + weights.hex())}"
    )


# ---------------------------------------------------------------------------- 5. channel


def _step_open(run: _Run, client: Tallystick) -> None:
    run.console.rule("[bold]5 · Client discovers the provider and opens a channel")
    offers = client.providers(MODEL_NAME)
    table = Table("provider", "endpoint", "model", "in / 1M", "out / 1M", "token")
    for o in offers:
        token = "USDC" if o.token.lower() == run.d.usdc.address.lower() else _short(o.token)
        table.add_row(
            _short(o.provider),
            o.endpoint,
            o.model,
            _usdc(o.prices.input_per_m),
            _usdc(o.prices.output_per_m),
            token,
        )
    run.console.print(table)
    with run.console.status("checking /v1/models against the listing; approve + open…"):
        run.channel = client.channels.open(MODEL_NAME, DEPOSIT)  # checks the node's listing
    run.console.print(
        f"the node's /v1/models matches the on-chain listing (prices, context, tokenizer hash)\n"
        f"opened channel {_short(run.channel.hex_id)} with a deposit of {_usdc(DEPOSIT)}"
    )
    run.balances["open"] = _balances(run)


# ---------------------------------------------------------------------------- 6. requests


def _step_requests(run: _Run, client: Tallystick) -> None:
    run.console.rule("[bold]6 · Verified, countersigned requests")
    assert run.channel is not None
    for i in range(run.options.prompts):
        prompt = PROMPTS[i % len(PROMPTS)]
        stream = run.options.stream and i == 0
        run.console.print(f"\n[bold cyan]client ›[/bold cyan] {prompt}")
        bill = _ask(run, client, prompt, stream=stream, seed=i)
        _show_receipt(run, client, bill, prompt)


def _ask(run: _Run, client: Tallystick, prompt: str, *, stream: bool, seed: int) -> Any:
    messages = [{"role": "user", "content": prompt}]
    args: dict[str, Any] = {"max_tokens": MAX_TOKENS, "temperature": 0.7, "seed": seed}
    if stream:
        run.console.print("[bold magenta]node   ›[/bold magenta] ", end="")
        chunks = client.chat.completions.create(
            model=MODEL_NAME, messages=messages, stream=True, **args
        )
        for chunk in chunks:
            for choice in chunk.choices:
                run.console.print(choice.delta.content or "", end="", soft_wrap=True)
        run.console.print("  [dim](streamed)[/dim]")
        return chunks.tally
    with run.console.status("generating…"):
        reply = client.chat.completions.create(model=MODEL_NAME, messages=messages, **args)
    text = " ".join((reply.choices[0].message.content or "").split())
    run.console.print(f"[bold magenta]node   ›[/bold magenta] {text}", soft_wrap=True)
    return reply.tally


def _show_receipt(run: _Run, client: Tallystick, bill: Any, prompt: str) -> None:
    assert run.channel is not None
    if bill is None:
        raise DemoError("the request ended without a verified bill")
    record = bill.record.record
    signer = recover_usage_record_signer(run.channel.domain, bill.record)
    receipt = client.store.tally(run.channel.channel_id).receipt
    if receipt is None:
        raise DemoError("the SDK verified the bill but kept no countersigned receipt")
    countersigner = recover_receipt_signer(run.channel.domain, receipt)
    ok_provider = signer.lower() == run.provider.address.lower()
    ok_client = countersigner.lower() == run.client.address.lower()
    run.requests.append(
        {
            "seq": record.seq,
            "prompt": prompt,
            "in": record.prompt_tokens,
            "out": record.completion_tokens,
            "cost": bill.cost,
            "verified": ok_provider and ok_client,
        }
    )
    run.console.print(
        f"  [dim]receipt #{record.seq}:[/dim] {record.prompt_tokens} in + "
        f"{record.completion_tokens} out tokens = [bold]{bill.cost}[/bold] units "
        f"({_usdc(bill.cost)}); channel total {bill.total_cost}\n"
        f"  {_mark(ok_provider)} provider signature {_short('0x' + bill.record.signature.hex())} "
        f"by {_short(signer)}   {_mark(ok_client)} client countersigned "
        f"{_short('0x' + receipt.signature.hex())} by {_short(countersigner)} "
        f"(totals {receipt.receipt.input_tokens}/{receipt.receipt.output_tokens})"
    )
    if not (ok_provider and ok_client):
        raise DemoError("a signature did not recover to the expected address")


# ---------------------------------------------------------------------------- 7. settle


def _step_settle(run: _Run, command: list[str], client: Tallystick) -> None:
    run.console.rule("[bold]7 · Settlement: claimMany, cooperative close, withdraw")
    assert run.channel is not None
    cid = run.channel.channel_id
    view = client.node(run.endpoint).channel(cid, client.biller.authorizer(run.channel))
    held = view.get("countersigned") or {}
    run.console.print(
        f"the node holds the countersigned receipt seq {held.get('seq')} "
        f"({held.get('inputTokens')} in / {held.get('outputTokens')} out tokens)"
    )
    with run.console.status("tallystick-node settle (claimMany)…"):
        out = subprocess.run(
            [*command, "settle", *_chain_flags(run), "--log-level", "WARNING"],
            env=_node_env(run),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    if out.returncode != 0:
        raise DemoError(f"tallystick-node settle failed: {(out.stderr or out.stdout).strip()}")
    run.console.print(f"tallystick-node settle: {out.stdout.strip()}")
    run.balances["claimed"] = _balances(run)
    with run.console.status("closing the channel cooperatively…"):
        closed = client.channels.close(cid)
    run.events["closed"] = closed
    run.console.print(
        f"closed cooperatively: provider paid {closed.paid} units, client refunded "
        f"{closed.refund} units (tx {_short(closed.tx_hash)})"
    )
    result = run.d.escrow.withdraw(run.provider, run.d.usdc.address)
    run.events["withdrawn"] = int(result.value)
    run.console.print(f"provider withdrew {_usdc(int(result.value))} of earnings")
    run.balances["end"] = _balances(run)


# ---------------------------------------------------------------------------- 8. bill


def _step_bill(run: _Run) -> int:
    run.console.rule("[bold]8 · The bill")
    run.console.print(_requests_table(run))
    run.console.print(_gas_table(run))
    run.console.print(_balances_table(run))
    checks = _checks(run)
    table = Table("check", "result", title="Does it add up? (read back from the chain)")
    for name, ok, detail in checks:
        table.add_row(name, f"{_mark(ok)} {detail}")
    run.console.print(table)
    if all(ok for _, ok, _ in checks):
        total = sum(r["cost"] for r in run.requests)
        run.console.print(
            f"[bold green]The bill adds up:[/bold green] {len(run.requests)} requests cost "
            f"{total} units ({_usdc(total)}) = provider earnings = deposit - refund."
        )
        return EXIT_OK
    run.console.print("[bold red]The bill does NOT add up:[/bold red] see the failed checks above.")
    return EXIT_FAIL


def _requests_table(run: _Run) -> Table:
    table = Table(
        "seq", "prompt", "tokens in", "tokens out", "cost (units)", "cost", title="Requests"
    )
    for r in run.requests:
        table.add_row(
            str(r["seq"]),
            r["prompt"],
            str(r["in"]),
            str(r["out"]),
            str(r["cost"]),
            _usdc(r["cost"]),
        )
    total = sum(r["cost"] for r in run.requests)
    table.add_row(
        "total",
        "",
        str(sum(r["in"] for r in run.requests)),
        str(sum(r["out"] for r in run.requests)),
        str(total),
        _usdc(total),
        style="bold",
    )
    return table


def _gas_table(run: _Run) -> Table:
    table = Table("block", "transaction", "from", "gas used", "fee (ETH)", title="On-chain gas")
    total = 0
    for tx in _transactions(run):
        total += tx["gas"]
        table.add_row(
            str(tx["block"]), tx["label"], tx["from"], f"{tx['gas']:,}", f"{tx['fee'] / 1e18:.8f}"
        )
    table.add_row("", "total", "", f"{total:,}", "", style="bold")
    return table


def _transactions(run: _Run) -> list[dict[str, Any]]:
    """Every transaction our accounts sent since the demo started, labelled from the ABIs."""
    w3 = run.web3
    ours = {run.provider.address.lower(), run.client.address.lower()}
    assert run.deployer is not None
    ours.add(run.deployer.address.lower())
    names = {a.lower(): n for n, a in run.d.addresses().items()}
    selectors = _selectors(run)
    rows = []
    for number in range(run.start_block + 1, int(w3.eth.block_number) + 1):
        block = w3.eth.get_block(number, full_transactions=True)
        txs: list[Any] = list(block["transactions"])
        for tx in txs:
            if str(tx["from"]).lower() not in ours:
                continue
            receipt = w3.eth.get_transaction_receipt(tx["hash"])
            rows.append(
                {
                    "block": number,
                    "label": _label(tx, receipt, names, selectors, run.role),
                    "from": run.role(str(tx["from"])),
                    "gas": int(receipt["gasUsed"]),
                    "fee": int(receipt["gasUsed"]) * int(receipt.get("effectiveGasPrice", 0)),
                }
            )
    return rows


def _selectors(run: _Run) -> dict[tuple[str, bytes], str]:
    out = {}
    for name, contract in (
        ("registry", run.d.registry.contract),
        ("escrow", run.d.escrow.contract),
        ("usdc", run.d.usdc.contract),
    ):
        for item in contract.abi:
            if item.get("type") == "function":
                selector = function_abi_to_4byte_selector(item)
                out[(contract.address.lower(), selector)] = f"{name}.{item['name']}"
    return out


def _label(
    tx: Any,
    receipt: Any,
    names: dict[str, str],
    selectors: dict[tuple[str, bytes], str],
    role: Callable[[str], str],
) -> str:
    if tx["to"] is None:
        created = str(receipt["contractAddress"]).lower()
        return f"deploy {names.get(created, created)}"
    data = bytes(tx["input"])
    if not data:
        return f"fund {role(str(tx['to']))} with {tx['value'] / 1e18:g} ETH"
    return selectors.get((str(tx["to"]).lower(), data[:4]), "call 0x" + data[:4].hex())


def _balances(run: _Run) -> dict[str, int]:
    usdc, escrow = run.d.usdc, run.d.escrow
    return {
        "client USDC": usdc.balance_of(run.client.address),
        "provider USDC (wallet)": usdc.balance_of(run.provider.address),
        "provider earnings in escrow": escrow.earnings(run.provider.address, usdc.address),
        "escrow USDC": usdc.balance_of(escrow.address),
    }


def _balances_table(run: _Run) -> Table:
    stages = [s for s in ("start", "open", "claimed", "end") if s in run.balances]
    headers = {
        "start": "before",
        "open": "channel open",
        "claimed": "after claimMany",
        "end": "after close+withdraw",
    }
    table = Table("USDC (base units)", *(headers[s] for s in stages), "change", title="Balances")
    for key in run.balances["start"]:
        values = [run.balances[s][key] for s in stages]
        change = values[-1] - values[0]
        table.add_row(key, *(f"{v:,}" for v in values), f"{change:+,}")
    return table


def _checks(run: _Run) -> list[tuple[str, bool, str]]:
    """The bill against the chain: each a (name, ok, numbers) row."""
    assert run.channel is not None
    state = run.d.escrow.get_channel(run.channel.channel_id)
    closed = run.events["closed"]
    costs = sum(r["cost"] for r in run.requests)
    tokens_in = sum(r["in"] for r in run.requests)
    tokens_out = sum(r["out"] for r in run.requests)
    start, end = run.balances["start"], run.balances["end"]
    client_paid = start["client USDC"] - end["client USDC"]
    provider_got = end["provider USDC (wallet)"] - start["provider USDC (wallet)"]
    escrow_change = end["escrow USDC"] - start["escrow USDC"]
    claimed = sum(
        int(ev.args["amount"])
        for ev in run.d.escrow.receipts_claimed(run.start_block, channel_id=state.channel_id)
    )
    expected = cost_of(tokens_in, tokens_out, run.channel.prices)
    on_chain_cost = run.d.escrow.cost_of(state.channel_id, tokens_in, tokens_out)
    return [
        (
            "request costs sum to the cost of the totals",
            costs == expected == on_chain_cost,
            f"{costs} = cost({tokens_in}, {tokens_out}) = {expected}; costOf {on_chain_cost}",
        ),
        (
            "the chain settled the client's totals",
            (state.input_tokens, state.output_tokens) == (tokens_in, tokens_out),
            f"channel totals {state.input_tokens}/{state.output_tokens}",
        ),
        (
            "provider earnings = request costs",
            state.paid == claimed == costs,
            f"channel.paid {state.paid}, ReceiptClaimed events {claimed}",
        ),
        (
            "refund = deposit - earnings",
            closed.refund == state.deposit - costs and int(state.status) == 3,
            f"{closed.refund} = {state.deposit} - {costs}, channel {state.status.name.lower()}",
        ),
        (
            "client paid exactly the costs",
            client_paid == costs,
            f"client USDC {start['client USDC']:,} → {end['client USDC']:,} ({-client_paid:+,})",
        ),
        (
            "provider withdrew exactly the costs",
            provider_got == run.events["withdrawn"] == costs,
            f"wallet {provider_got:+,}, withdrawn {run.events['withdrawn']}",
        ),
        (
            "the escrow holds nothing back",
            escrow_change == 0 and end["provider earnings in escrow"] == 0,
            f"escrow USDC change {escrow_change:+,}",
        ),
        (
            "every receipt verified and countersigned",
            bool(run.requests) and all(r["verified"] for r in run.requests),
            f"{len(run.requests)} requests",
        ),
    ]


# ---------------------------------------------------------------------------- --keep


def _print_keep(run: _Run) -> None:
    env = {
        "TALLYSTICK_RPC": run.rpc,
        "TALLYSTICK_REGISTRY": run.d.registry.address,
        "TALLYSTICK_ESCROW": run.d.escrow.address,
        "TALLYSTICK_KEY": _hex_key(run.client),
        "TALLYSTICK_STORE": str(run.workdir / "client.db"),
    }
    node_env = {  # the provider's side, for tallystick-node status/settle/withdraw
        "TALLYSTICK_NODE_RPC": run.rpc,
        "TALLYSTICK_NODE_REGISTRY": run.d.registry.address,
        "TALLYSTICK_NODE_ESCROW": run.d.escrow.address,
        "TALLYSTICK_NODE_KEY": _hex_key(run.provider),
        "TALLYSTICK_NODE_DB": str(run.workdir / "node.db"),
    }
    env_file = run.workdir / "demo.env"
    lines = [f"export {k}={v}\n" for k, v in {**env, **node_env}.items()]
    env_file.touch(mode=0o600)  # keys inside: private before anything is written
    env_file.write_text("".join(lines))
    env_file.chmod(0o600)
    pids = " ".join(f"-{p.popen.pid}" for p in run.procs.procs)
    run.console.print(
        Panel(
            _KEEP_TEXT.format(
                env_file=env_file,
                endpoint=run.endpoint,
                model=MODEL_NAME,
                provider_key=_hex_key(run.provider),
                workdir=run.workdir,
                pids=pids,
                **env,
            ),
            title="--keep: the chain and the node are still running (dev keys, local chain only)",
        )
    )


_KEEP_TEXT = """chain     {TALLYSTICK_RPC}
contracts registry {TALLYSTICK_REGISTRY}, escrow {TALLYSTICK_ESCROW}
node      {endpoint}   (provider key {provider_key})
client    key {TALLYSTICK_KEY}   store {TALLYSTICK_STORE}

CLI:     source {env_file}
         tallystick providers
         tallystick channel open --model {model} --deposit 1000000
         tallystick chat --model {model} -m "Tell me a joke" --max-tokens 48
         tallystick bill
SDK:     from tallystick.client import Chain, Tallystick, Wallet
         c = Tallystick(Wallet.from_key(KEY), STORE, chain=Chain.connect(RPC, REGISTRY, ESCROW))
         c.chat.completions.create(model="{model}", messages=[...], max_tokens=48).tally
openai:  c.openai(model="{model}").chat.completions.create(model="{model}", messages=[...])
node:    tallystick-node status   (after `source`; also settle, withdraw --token USDC)
stop:    kill -- {pids}   (logs in {workdir})"""


# ---------------------------------------------------------------------------- formatting


def _hex_key(account: LocalAccount) -> str:
    return "0x" + bytes(account.key).hex()


def _short(hex_text: str) -> str:
    return hex_text if len(hex_text) <= 14 else f"{hex_text[:8]}…{hex_text[-4:]}"


def _usdc(units: int) -> str:
    return f"{units / USDC:,.6f} USDC"


def _mark(ok: bool) -> str:
    return "[green]✓[/green]" if ok else "[red]✗[/red]"
