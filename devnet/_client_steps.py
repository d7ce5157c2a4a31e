"""``tallystick demo`` steps 5 to 7, the client's side: open a channel, verified requests,
settlement (``tallystick-node settle``, a cooperative close, the provider's withdrawal)."""

from __future__ import annotations

import os
import subprocess
from typing import TYPE_CHECKING, Any

from rich.table import Table
from tallystick.client import Tallystick
from tallystick.protocol import recover_receipt_signer, recover_usage_record_signer

from . import _report as report
from ._processes import MODEL_NAME, DevnetError
from ._report import USDC, hex_key, mark, short, usdc

if TYPE_CHECKING:
    from ._demo import DemoRun

__all__ = ["ask", "open_step", "requests_step", "settle_step", "show_receipt"]

DEPOSIT = 1 * USDC
MAX_TOKENS = 48
PROMPTS = (
    "What is the capital of France?",
    "Name three primary colours.",
    "Write a haiku about the sea.",
    "Give one tip for someone learning to code.",
)


# ---------------------------------------------------------------------------- 5. channel


def open_step(run: DemoRun, client: Tallystick) -> None:
    run.console.rule("[bold]5 · Client discovers the provider and opens a channel")
    offers = client.providers(MODEL_NAME)
    table = Table("provider", "endpoint", "model", "in / 1M", "out / 1M", "token")
    for o in offers:
        token = "USDC" if o.token.lower() == run.market.usdc.address.lower() else short(o.token)
        table.add_row(
            short(o.provider),
            o.endpoint,
            o.model,
            usdc(o.prices.input_per_m),
            usdc(o.prices.output_per_m),
            token,
        )
    run.console.print(table)
    with run.console.status("checking /v1/models against the listing; approve + open…"):
        run.channel = client.channels.open(MODEL_NAME, DEPOSIT)  # checks the node's listing
    run.console.print(
        f"the node's /v1/models matches the on-chain listing (prices, context, tokenizer hash)\n"
        f"opened channel {short(run.channel.hex_id)} with a deposit of {usdc(DEPOSIT)}"
    )
    run.balances["open"] = report.balances(run)


# ---------------------------------------------------------------------------- 6. requests


def requests_step(run: DemoRun, client: Tallystick) -> None:
    run.console.rule("[bold]6 · Verified, countersigned requests")
    for i in range(run.options.prompts):
        prompt = PROMPTS[i % len(PROMPTS)]
        stream = run.options.stream and i == 0
        run.console.print(f"\n[bold cyan]client ›[/bold cyan] {prompt}")
        bill = ask(run, client, prompt, stream=stream, seed=i)
        show_receipt(run, client, bill, prompt)


def ask(run: DemoRun, client: Tallystick, prompt: str, *, stream: bool, seed: int) -> Any:
    """One chat request, its answer printed; the verified bill."""
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


def show_receipt(run: DemoRun, client: Tallystick, bill: Any, prompt: str) -> None:
    """Check both signatures of the request's bill, print them, add the request to the bill."""
    assert run.channel is not None
    if bill is None:
        raise DevnetError("the request ended without a verified bill")
    record = bill.record.record
    signer = recover_usage_record_signer(run.channel.domain, bill.record)
    receipt = client.store.tally(run.channel.channel_id).receipt
    if receipt is None:
        raise DevnetError("the SDK verified the bill but kept no countersigned receipt")
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
        f"({usdc(bill.cost)}); channel total {bill.total_cost}\n"
        f"  {mark(ok_provider)} provider signature {short('0x' + bill.record.signature.hex())} "
        f"by {short(signer)}   {mark(ok_client)} client countersigned "
        f"{short('0x' + receipt.signature.hex())} by {short(countersigner)} "
        f"(totals {receipt.receipt.input_tokens}/{receipt.receipt.output_tokens})"
    )
    if not (ok_provider and ok_client):
        raise DevnetError("a signature did not recover to the expected address")


# ---------------------------------------------------------------------------- 7. settle


def settle_step(run: DemoRun, command: list[str], client: Tallystick) -> None:
    run.console.rule("[bold]7 · Settlement: claimMany, cooperative close, withdraw")
    assert run.channel is not None
    cid = run.channel.channel_id
    view = client.node(run.endpoint).channel(cid, client.biller.authorizer(run.channel))
    held = view.get("countersigned") or {}
    run.console.print(
        f"the node holds the countersigned receipt seq {held.get('seq')} "
        f"({held.get('inputTokens')} in / {held.get('outputTokens')} out tokens)"
    )
    # The key travels in the environment, not argv, so `ps` does not show it.
    env = {**os.environ, "TALLYSTICK_NODE_KEY": hex_key(run.provider), "PYTHONUNBUFFERED": "1"}
    with run.console.status("tallystick-node settle (claimMany)…"):
        out = subprocess.run(
            [*command, "settle", *_chain_flags(run), "--log-level", "WARNING"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    if out.returncode != 0:
        raise DevnetError(f"tallystick-node settle failed: {(out.stderr or out.stdout).strip()}")
    run.console.print(f"tallystick-node settle: {out.stdout.strip()}")
    run.balances["claimed"] = report.balances(run)
    with run.console.status("closing the channel cooperatively…"):
        closed = client.channels.close(cid)
    run.events["closed"] = closed
    run.console.print(
        f"closed cooperatively: provider paid {closed.paid} units, client refunded "
        f"{closed.refund} units (tx {short(closed.tx_hash)})"
    )
    result = run.market.escrow.withdraw(run.provider, run.market.usdc.address)
    run.events["withdrawn"] = int(result.value)
    run.console.print(f"provider withdrew {usdc(int(result.value))} of earnings")
    run.balances["end"] = report.balances(run)


def _chain_flags(run: DemoRun) -> list[str]:
    market = run.market
    flags = ["--rpc", run.rpc, "--escrow", market.escrow.address]
    return [*flags, "--registry", market.registry.address, "--db", str(run.workdir / "node.db")]
