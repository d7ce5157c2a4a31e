"""``tallystick demo``: the whole marketplace on a local chain, ending in a bill that adds up.

1. find the model and anvil; start anvil (or use ``--rpc``);
2. deploy ProviderRegistry, TallyEscrow and MockUSDC; fund a fresh provider and client;
3. start ``tallystick-node serve`` as a real subprocess; the provider registers its endpoint
   and lists the model with the tokenizer hash of the bundle the node serves;
4. the client discovers the provider on-chain, checks ``/v1/models``, opens a USDC channel;
5. a few verified, countersigned chat requests (one streamed);
6. (6b) audits of those requests against the listed weights, one of a cheating node;
7. the node settles with ``claimMany`` (``tallystick-node settle``), the client closes
   cooperatively, the provider withdraws;
8. the bill: requests, gas per transaction, balances; the demo checks against the chain that
   it adds up and exits 1 when it does not;
9. the same request through ``tallystick gateway`` by the plain ``openai`` SDK.

Every process it starts runs in its own process group and is stopped on success, failure,
Ctrl-C and SIGTERM (unless ``--keep``). The steps are here; the processes and the market come
from ``_processes`` and ``_market``, the tables and checks from ``_report``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
from eth_account import Account
from eth_account.signers.local import LocalAccount
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from tallystick.client import Chain, OpenChannel, Tallystick, Wallet
from tallystick.protocol import (
    Prices,
    TallystickError,
    connect,
)
from web3 import Web3

from . import _report as report
from ._audit_step import audit_step
from ._client_steps import DEPOSIT, MAX_TOKENS, PROMPTS, open_step, requests_step, settle_step
from ._gateway_step import gateway_step
from ._market import (
    Market,
    deploy_market,
    dev_account,
    gguf_context_length,
    list_model,
    register_provider,
    send_eth,
    served_tokenizer_hash,
)
from ._processes import (
    CHAIN_ID,
    MODEL_NAME,
    DevnetError,
    Proc,
    Processes,
    find_anvil,
    find_model,
    free_port,
    node_command,
    node_progress,
    spawn_node,
    start_anvil,
    wait_http,
)
from ._report import USDC, hex_key, short, usdc

__all__ = ["DemoOptions", "run_demo"]

# 50 and 150 USDC per million tokens: dear, so that a 40-token request costs a visible amount
# in 6-decimal base units (50 and 150 units per token) instead of rounding to almost nothing.
PRICES = Prices(input_per_m=50 * USDC, output_per_m=150 * USDC)
CLIENT_USDC = 100 * USDC
GAS_ETH = 10**18  # each fresh account gets 1 ETH for gas
CHALLENGE_PERIOD = 3600
NODE_START_TIMEOUT_S = 900.0  # a loaded 2-core machine needs minutes to dequantise the GGUF
EXIT_OK, EXIT_FAIL, EXIT_INTERRUPTED = 0, 1, 130


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


@dataclass
class DemoRun:
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
    _market: Market | None = None
    start_block: int = 0
    endpoint: str = ""
    channel: OpenChannel | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    balances: dict[str, dict[str, int]] = field(default_factory=dict)
    events: dict[str, Any] = field(default_factory=dict)
    pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1))
    context_length: Future[int] = field(default_factory=Future)

    @property
    def market(self) -> Market:
        assert self._market is not None, "the contracts are deployed in step 2"
        return self._market

    def chain(self) -> Chain:
        """The SDK's view of the market (a fresh Web3 each time)."""
        return Chain.connect(self.rpc, self.market.registry.address, self.market.escrow.address)

    def role(self, address: str | None) -> str:
        names = {
            self.provider.address.lower(): "provider",
            self.client.address.lower(): "client",
        }
        if self.deployer is not None:
            names[self.deployer.address.lower()] = "deployer"
        return names.get((address or "").lower(), short(address or "?"))


def run_demo(options: DemoOptions, console: Console | None = None) -> int:
    """Run the demo; 0 only when the bill adds up on-chain."""
    console = console or Console(highlight=False)
    workdir = Path(tempfile.mkdtemp(prefix="tallystick-demo-"))
    run = DemoRun(options, console, workdir, Processes())
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


def _steps(run: DemoRun) -> int:
    run.model = find_model(run.options.model)
    command = node_command()
    _step_chain(run)
    _step_deploy(run)
    serve_node(run, command)
    _step_list(run)
    with Tallystick(
        Wallet(run.client),
        run.workdir / "client.db",
        chain=run.chain(),
        audit_weights=run.model,  # the client holds the listed weights: it can audit
        audit_fraction=1.0,  # every request, for the demo (default 5%)
    ) as client:
        open_step(run, client)
        requests_step(run, client)
        audit_step(run, command, client)
        settle_step(run, command, client)
    code = _step_bill(run)
    return _step_gateway(run) if code == EXIT_OK else code


def _finish(run: DemoRun, code: int) -> None:
    console = run.console
    run.pool.shutdown(wait=False, cancel_futures=True)
    if run.options.keep and code == EXIT_OK:
        report.print_keep(run)
        return
    if run.procs.procs:
        with console.status("stopping the processes the demo started…"):
            stopped = run.procs.stop_all()
        console.print(f"stopped: {', '.join(stopped)}")
    if code == EXIT_FAIL and any(run.workdir.glob("*.log")):
        console.print(f"logs kept in {run.workdir}")
    else:
        shutil.rmtree(run.workdir, ignore_errors=True)


def _show_node_log_tail(run: DemoRun, lines: int = 8) -> None:
    node = next((p for p in run.procs.procs if p.name == "node"), None)
    tail = node.tail(lines) if node is not None else ""
    if tail:
        run.console.print(Panel(tail, title="last lines of the node's log"))


# ---------------------------------------------------------------------------- 1. chain


def _step_chain(run: DemoRun) -> None:
    run.console.rule("[bold]1 · Local chain")
    if run.options.rpc:
        run.rpc = run.options.rpc
        run.w3 = connect(run.rpc)
        run.deployer = _deployer(run.options.deployer_key)
        run.console.print(f"using the chain at {run.rpc} (chain id {run.w3.eth.chain_id})")
    else:
        if run.options.deployer_key:
            raise DevnetError("--deployer-key only goes with --rpc (anvil's dev accounts are used)")
        find_anvil()  # before the status line: a missing anvil is one clear error
        port = free_port()
        with run.console.status(f"starting anvil on port {port}…"):
            anvil = start_anvil(run.procs, log=run.workdir / "anvil.log", port=port)
            run.rpc, run.w3 = anvil.url, connect(anvil.url)
        run.deployer = dev_account()
        run.console.print(f"anvil pid {anvil.proc.popen.pid} at {run.rpc} (chain id {CHAIN_ID})")
    run.start_block = int(run.w3.eth.block_number)
    balance = run.w3.eth.get_balance(run.deployer.address)
    if balance < 3 * GAS_ETH:
        raise DevnetError(
            f"the deployer {run.deployer.address} has {balance / 1e18:.4f} ETH; it needs 3 ETH "
            "(pass --deployer-key of a funded account)"
        )


def _deployer(key: str | None) -> LocalAccount:
    if not key:
        return dev_account()
    try:
        return Account.from_key(key)
    except (ValueError, TypeError) as exc:
        raise DevnetError("--deployer-key is not a valid private key (32 bytes of hex)") from exc


# ---------------------------------------------------------------------------- 2. contracts


def _step_deploy(run: DemoRun) -> None:
    run.console.rule("[bold]2 · Contracts and accounts")
    assert run.deployer is not None and run.w3 is not None
    w3 = run.w3
    with run.console.status("deploying ProviderRegistry, TallyEscrow and MockUSDC…"):
        run._market = deploy_market(run.rpc, run.deployer, w3=w3, challenge_period=CHALLENGE_PERIOD)
    table = Table("contract", "address", box=None)
    for name, address in run.market.deployment.addresses().items():
        table.add_row(name, address)
    run.console.print(table)
    with run.console.status("funding the provider and the client…"):
        for account in (run.provider, run.client):
            send_eth(w3, run.deployer, account.address, GAS_ETH)
        run.market.usdc.mint(run.deployer, run.client.address, CLIENT_USDC)
    run.console.print(
        f"provider {run.provider.address}: 1 ETH for gas\n"
        f"client   {run.client.address}: 1 ETH for gas, {usdc(CLIENT_USDC)} minted"
    )
    run.balances["start"] = report.balances(run)


# ---------------------------------------------------------------------------- 3. node


def serve_node(run: DemoRun, command: list[str], extra: tuple[str, ...] | list[str] = ()) -> None:
    if not run.endpoint:  # the first start, not a restart
        run.console.rule("[bold]3 · Provider node")
    port = free_port() if not run.endpoint else int(run.endpoint.rsplit(":", 1)[1])
    node = spawn_node(
        run.procs,
        rpc=run.rpc,
        escrow=run.market.escrow.address,
        registry=run.market.registry.address,
        db=run.workdir / "node.db",
        key=hex_key(run.provider),
        port=port,
        # the demo triggers settlement itself, with `tallystick-node settle`
        args=[
            "--model",
            str(run.model),
            "--settle-interval",
            "86400",
            "--log-format",
            "kv",
            *extra,
        ],
        command=command,
        log=run.workdir / "node.log",
    )
    run.endpoint = node.url
    # Read while the node loads (it takes seconds to parse): the listing needs it.
    run.context_length = run.pool.submit(gguf_context_length, run.model)
    run.console.print(
        f"tallystick-node serve pid {node.proc.popen.pid} on {run.endpoint} "
        f"(model {run.model.name}, log {node.proc.log})"
    )
    _wait_for_node(run, node.proc)


def _wait_for_node(run: DemoRun, proc: Proc) -> None:
    """Poll /health, showing the node's own progress (its log) while it loads the model."""
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[count]}"),  # steps only where the stage has a count
        TimeElapsedColumn(),
    )
    started = time.monotonic()
    with Progress(*columns, console=run.console, transient=True) as bar:
        task = bar.add_task("starting the node process", total=None, count="")

        def show() -> None:
            assert proc.log is not None
            stage, done, total = node_progress(proc.log)
            count = f"{done or 0}/{total}" if total else ""
            bar.update(task, description=stage, completed=done or 0, total=total, count=count)

        wait_http(run.endpoint + "/health", proc, NODE_START_TIMEOUT_S, "the node", on_wait=show)
    health = httpx.get(run.endpoint + "/health", timeout=5).json()
    run.console.print(
        f"node ready in {time.monotonic() - started:.0f} s: serving {health.get('model')} "
        f"for provider {health.get('provider')}"
    )


# ---------------------------------------------------------------------------- 4. listing


def _step_list(run: DemoRun) -> None:
    run.console.rule("[bold]4 · Provider registers and lists the model")
    tokenizer_hash = served_tokenizer_hash(run.endpoint, MODEL_NAME)
    context = run.context_length.result()
    metadata = json.dumps({"name": "tallystick demo provider"})
    register_provider(run.market.deployment, run.provider, run.endpoint, metadata)
    mid = list_model(
        run.market.deployment,
        run.provider,
        MODEL_NAME,
        PRICES,
        token=run.market.usdc.address,
        tokenizer_hash=tokenizer_hash,
        context_length=context,
        weights=run.model,  # the listing commits to the weights (protocol §10.1)
    )
    weights = run.market.registry.get_listing(run.provider.address, mid).model_hash
    run.console.print(
        f"registered {short(run.provider.address)} at {run.endpoint}\n"
        f"listed {MODEL_NAME}: {usdc(PRICES.input_per_m)} per 1M input tokens, "
        f"{usdc(PRICES.output_per_m)} per 1M output tokens "
        f"(= {PRICES.input_per_m // 10**6} and {PRICES.output_per_m // 10**6} base units per "
        f"token), context {context}, tokenizerHash {short('0x' + tokenizer_hash.hex())}, "
        f"modelHash {short('0x' + weights.hex())}"
    )


# ---------------------------------------------------------------------------- 8, 9


def _step_bill(run: DemoRun) -> int:
    run.console.rule("[bold]8 · The bill")
    if report.bill(run):
        total = sum(r["cost"] for r in run.requests)
        run.console.print(
            f"[bold green]The bill adds up:[/bold green] {len(run.requests)} requests cost "
            f"{total} units ({usdc(total)}) = provider earnings = deposit - refund."
        )
        return EXIT_OK
    run.console.print("[bold red]The bill does NOT add up:[/bold red] see the failed checks above.")
    return EXIT_FAIL


def _step_gateway(run: DemoRun) -> int:
    run.console.rule("[bold]9 · Any OpenAI client: the same request through `tallystick gateway`")
    gateway_step(
        run.console,
        wallet=Wallet(run.client),
        chain=run.chain(),
        token=run.market.usdc.address,
        budget=DEPOSIT,
        store=run.workdir / "gateway.db",
        model=MODEL_NAME,
        prompt=PROMPTS[0],
        max_tokens=MAX_TOKENS,
        temperature=0.7,  # as the first request of step 6 (ask)
        seed=0,
    )
    run.console.print(
        "[bold green]The plain openai SDK paid through Tallystick:[/bold green] same request, "
        "bill verified and countersigned by the gateway."
    )
    return EXIT_OK
