"""What the demo shows: the bill's tables (requests, gas, balances), its checks against the
chain, the ``--keep`` panel, and the small formatting helpers the steps share."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from eth_account.signers.local import LocalAccount
from eth_utils import function_abi_to_4byte_selector
from rich.panel import Panel
from rich.table import Table
from tallystick.protocol import ChannelStatus, cost_of

from ._processes import MODEL_NAME

if TYPE_CHECKING:
    from ._demo import DemoRun

__all__ = ["balances", "bill", "hex_key", "mark", "print_keep", "short", "usdc"]

USDC = 10**6  # MockUSDC has 6 decimals


# ---------------------------------------------------------------------------- formatting


def hex_key(account: LocalAccount) -> str:
    return "0x" + bytes(account.key).hex()


def short(hex_text: str) -> str:
    return hex_text if len(hex_text) <= 14 else f"{hex_text[:8]}…{hex_text[-4:]}"


def usdc(units: int) -> str:
    return f"{units / USDC:,.6f} USDC"


def mark(ok: bool) -> str:
    return "[green]✓[/green]" if ok else "[red]✗[/red]"


# ---------------------------------------------------------------------------- the bill


def bill(run: DemoRun) -> bool:
    """Print the requests, gas and balances tables and the checks; True when all pass."""
    run.console.print(_requests_table(run))
    run.console.print(_gas_table(run))
    run.console.print(_balances_table(run))
    checks = _checks(run)
    table = Table("check", "result", title="Does it add up? (read back from the chain)")
    for name, ok, detail in checks:
        table.add_row(name, f"{mark(ok)} {detail}")
    run.console.print(table)
    return all(ok for _, ok, _ in checks)


def _requests_table(run: DemoRun) -> Table:
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
            usdc(r["cost"]),
        )
    total = sum(r["cost"] for r in run.requests)
    table.add_row(
        "total",
        "",
        str(sum(r["in"] for r in run.requests)),
        str(sum(r["out"] for r in run.requests)),
        str(total),
        usdc(total),
        style="bold",
    )
    return table


def _gas_table(run: DemoRun) -> Table:
    table = Table("block", "transaction", "from", "gas used", "fee (ETH)", title="On-chain gas")
    total = 0
    for tx in _transactions(run):
        total += tx["gas"]
        table.add_row(
            str(tx["block"]), tx["label"], tx["from"], f"{tx['gas']:,}", f"{tx['fee'] / 1e18:.8f}"
        )
    table.add_row("", "total", "", f"{total:,}", "", style="bold")
    return table


def _transactions(run: DemoRun) -> list[dict[str, Any]]:
    """Every transaction our accounts sent since the demo started, labelled from the ABIs."""
    w3 = run.market.w3
    ours = {a.address.lower() for a in (run.provider, run.client, run.market.deployer)}
    names = {a.lower(): n for n, a in run.market.deployment.addresses().items()}
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


def _selectors(run: DemoRun) -> dict[tuple[str, bytes], str]:
    out = {}
    for name, contract in (
        ("registry", run.market.registry.contract),
        ("escrow", run.market.escrow.contract),
        ("usdc", run.market.usdc.contract),
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


def balances(run: DemoRun) -> dict[str, int]:
    """The USDC balances the bill follows, read from the chain now."""
    token, escrow = run.market.usdc, run.market.escrow
    return {
        "client USDC": token.balance_of(run.client.address),
        "provider USDC (wallet)": token.balance_of(run.provider.address),
        "provider earnings in escrow": escrow.earnings(run.provider.address, token.address),
        "escrow USDC": token.balance_of(escrow.address),
    }


def _balances_table(run: DemoRun) -> Table:
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


def _checks(run: DemoRun) -> list[tuple[str, bool, str]]:
    """The bill against the chain: each a (name, ok, numbers) row."""
    assert run.channel is not None
    escrow = run.market.escrow
    state = escrow.get_channel(run.channel.channel_id)
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
        for ev in escrow.receipts_claimed(run.start_block, channel_id=state.channel_id)
    )
    expected = cost_of(tokens_in, tokens_out, run.channel.prices)
    on_chain_cost = escrow.cost_of(state.channel_id, tokens_in, tokens_out)
    return [
        (
            "request costs sum to the cost of the totals",
            costs == expected == on_chain_cost,
            f"{costs} = cost({tokens_in}, {tokens_out}) = {expected}; costOf {on_chain_cost}",
        ),
        (
            "the chain settled the client's totals",
            (state.claimed_input, state.claimed_output) == (tokens_in, tokens_out),
            f"channel totals {state.claimed_input}/{state.claimed_output}",
        ),
        (
            "provider earnings = request costs",
            state.paid == claimed == costs,
            f"channel.paid {state.paid}, ReceiptClaimed events {claimed}",
        ),
        (
            "refund = deposit - earnings",
            closed.refund == state.deposit - costs and state.status == ChannelStatus.CLOSED,
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


def print_keep(run: DemoRun) -> None:
    """Write ``demo.env`` (mode 600: keys inside) and show how to use what is still running."""
    market = run.market
    env = {
        "TALLYSTICK_RPC": run.rpc,
        "TALLYSTICK_REGISTRY": market.registry.address,
        "TALLYSTICK_ESCROW": market.escrow.address,
        "TALLYSTICK_KEY": hex_key(run.client),
        "TALLYSTICK_STORE": str(run.workdir / "client.db"),
    }
    node_env = {  # the provider's side, for tallystick-node status/settle/withdraw
        "TALLYSTICK_NODE_RPC": run.rpc,
        "TALLYSTICK_NODE_REGISTRY": market.registry.address,
        "TALLYSTICK_NODE_ESCROW": market.escrow.address,
        "TALLYSTICK_NODE_KEY": hex_key(run.provider),
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
                provider_key=hex_key(run.provider),
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
