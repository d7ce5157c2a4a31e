"""On-chain cost per request: one ``claimMany`` of N receipts, each covering R requests, against
settling every request on its own (an ERC-20 transfer, or a payment-channel claim).

    python -m bench.gas_per_request

Everything runs on a fresh anvil with the real contracts; every figure is the ``gasUsed`` of a
mined transaction. Receipts are real: each covers R usage records chained with the protocol's
usage root and is countersigned by the channel's client.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ._common import (
    Chain,
    Target,
    anvil,
    console,
    funded_account,
    save,
    send_tx,
    show_targets,
    start_chain,
    table,
)

__all__ = ["Config", "run"]

PRICES = (10**12, 4 * 10**12)  # wei per million input / output tokens
PROMPT_TOKENS, COMPLETION_TOKENS = 40, 64  # one request's counts in the usage records
TARGET_RATIO = 50.0
TARGET_REQUESTS = 50  # "at 50 requests per claim"


@dataclass(frozen=True)
class Config:
    batches: tuple[int, ...] = (1, 10, 50)  # N: receipts per claimMany
    per_receipt: tuple[int, ...] = (1, 10, 50, 100)  # R: requests covered by one receipt
    baseline_samples: int = 5


class _Channels:
    """N open ETH channels of one client, with their usage chains as the node would sign them."""

    def __init__(self, chain: Chain, provider: Any, client: Any, model: bytes, n: int) -> None:
        from tallystick.protocol import ZERO_ROOT

        self.chain, self.client = chain, client
        limits = {"max_input_price_per_m": PRICES[0], "max_output_price_per_m": PRICES[1]}
        opened = [
            chain.escrow.open(client, provider.address, model, 10**17, **limits) for _ in range(n)
        ]
        self.open_gas = [r.gas_used for r in opened]
        self.ids = [bytes(r.value) for r in opened]
        self.state = {cid: (0, 0, 0, ZERO_ROOT) for cid in self.ids}  # seq, I, O, root

    def receipts(self, requests: int) -> list[Any]:
        """Advance every channel by ``requests`` records; its countersigned cumulative receipt."""
        from tallystick.protocol import Receipt, sign_receipt

        out = []
        for cid in self.ids:
            for _ in range(requests):
                self._append(cid)
            _, i, o, root = self.state[cid]
            out.append(
                sign_receipt(self.client, self.chain.escrow.domain, Receipt(cid, i, o, root))
            )
        return out

    def _append(self, cid: bytes) -> None:
        from tallystick.protocol import UsageRecord, hash_token_ids

        seq, i, o, root = self.state[cid]
        record = UsageRecord(
            channel_id=cid,
            seq=seq + 1,
            prompt_tokens=PROMPT_TOKENS,
            completion_tokens=COMPLETION_TOKENS,
            prompt_hash=hash_token_ids(range(seq, seq + PROMPT_TOKENS)),
            completion_hash=hash_token_ids(range(seq, seq + COMPLETION_TOKENS)),
            input_tokens=i + PROMPT_TOKENS,
            output_tokens=o + COMPLETION_TOKENS,
            prev_root=root,
        )
        self.state[cid] = (seq + 1, record.input_tokens, record.output_tokens, record.usage_root())


def _claim_many(chain: Chain, provider: Any, receipts: list[Any]) -> int:
    result = chain.escrow.claim_many(provider, receipts)
    if result.skipped:
        raise RuntimeError(f"claimMany skipped {len(result.skipped)} receipts")
    return int(result.gas_used)


def _market(chain: Chain) -> tuple[Any, Any, bytes]:
    from tallystick.protocol import Prices

    provider, client = funded_account(chain.w3), funded_account(chain.w3)
    chain.registry.register(provider, "http://127.0.0.1:1")
    listed = chain.registry.list_model(
        provider, "bench-model", Prices(*PRICES), tokenizer_hash=b"\x01" * 32, context_length=8192
    )
    return provider, client, bytes(listed.value)


def measure_batches(chain: Chain, config: Config) -> dict[str, Any]:
    """claimMany gas for each N (first claim, then steady state per R) and open/close gas."""
    provider, client, model = _market(chain)
    rows: dict[str, Any] = {"open": [], "close": [], "batches": {}}
    for n in config.batches:
        console.print(f"  claimMany of {n} receipt(s): opening {n} channel(s)")
        channels = _Channels(chain, provider, client, model, n)
        rows["open"] += channels.open_gas
        first = _claim_many(chain, provider, channels.receipts(1))
        steady = {r: _claim_many(chain, provider, channels.receipts(r)) for r in config.per_receipt}
        rows["batches"][n] = {"first_claim": first, "steady": steady}
        rows["close"].append(_close(chain, provider, channels))
    return rows


def _close(chain: Chain, provider: Any, channels: _Channels) -> int:
    """A cooperative close of one channel at its last claimed totals (both sides sign)."""
    from tallystick.protocol import Receipt, receipt_message

    cid = channels.ids[0]
    _, i, o, root = channels.state[cid]
    signed = channels.receipts(0)[0]
    provider_sig = provider.sign_message(
        receipt_message(chain.escrow.domain, Receipt(cid, i, o, root))
    )
    return int(
        chain.escrow.close_cooperative(provider, signed, bytes(provider_sig.signature)).gas_used
    )


def measure_baselines(chain: Chain, samples: int) -> dict[str, int]:
    """Per-request settlement: MockUSDC transfer / transferFrom, and one TallyEscrow claim."""
    payer, payee, facilitator = (funded_account(chain.w3) for _ in range(3))
    usdc = chain.usdc
    usdc.mint(payer, payer.address, 10**15)
    usdc.mint(payer, payee.address, 1)  # steady state: the payee already holds a balance
    usdc.approve(payer, facilitator.address, 10**15)
    transfer = [_erc20(chain, payer, "transfer", payee.address, 1000) for _ in range(samples)]
    pull = [
        _erc20(chain, facilitator, "transferFrom", payer.address, payee.address, 1000)
        for _ in range(samples)
    ]
    provider, client, model = _market(chain)
    channels = _Channels(chain, provider, client, model, 1)
    claims = [
        chain.escrow.claim(provider, channels.receipts(1)[0]).gas_used for _ in range(samples)
    ]
    # The first of each is a cold start (fresh storage slots); report the steady state.
    return {
        "erc20_transfer": min(transfer[1:]),
        "erc20_transferFrom": min(pull[1:]),
        "escrow_claim": min(claims[1:]),
    }


def _erc20(chain: Chain, account: Any, fn: str, *args: Any) -> int:
    return send_tx(chain.w3, account, getattr(chain.usdc.contract.functions, fn)(*args))


def per_request(
    batches: dict[int, Any], opens: Sequence[int], close: Sequence[int]
) -> list[dict[str, Any]]:
    """Gas per request for every (N, R): claim share, and open+close amortised over R."""
    open_gas = sum(opens) / len(opens)
    close_gas = sum(close) / len(close)
    out = []
    for n, figures in batches.items():
        for r, gas in figures["steady"].items():
            out.append(
                {
                    "receipts": n,
                    "requests_per_receipt": r,
                    "claim_gas_per_request": gas / (n * r),
                    "open_close_gas_per_request": (open_gas + close_gas) / r,
                    "claim_tx_gas": gas,
                }
            )
    return out


def run(config: Config | None = None) -> dict[str, Any]:
    """Measure, print and save ``gas_per_request.json``; returns the figures."""
    config = config or Config()
    with anvil() as url:
        chain = start_chain(url)
        console.print("[bold]On-chain cost per request[/] (anvil, real contracts)")
        batches = measure_batches(chain, config)
        baselines = measure_baselines(chain, config.baseline_samples)
    rows = per_request(batches["batches"], batches["open"], batches["close"])
    targets = _targets(rows, baselines)
    _print(rows, batches, baselines, targets)
    result = {
        "config": config.__dict__,
        "per_request": rows,
        "claim_many": {str(n): v for n, v in batches["batches"].items()},
        "open_gas": sum(batches["open"]) / len(batches["open"]),
        "close_cooperative_gas": sum(batches["close"]) / len(batches["close"]),
        "baselines": baselines,
        "targets": [t.to_json() for t in targets],
    }
    save("gas_per_request", result)
    return result


def _targets(rows: list[dict[str, Any]], baselines: dict[str, int]) -> list[Target]:
    transfer = baselines["erc20_transfer"]
    out = []
    for row in rows:
        if row["receipts"] * row["requests_per_receipt"] != TARGET_REQUESTS:
            continue
        ratio = transfer / row["claim_gas_per_request"]
        name = (
            f"{TARGET_REQUESTS} requests per claim ({row['receipts']} receipt(s) x "
            f"{row['requests_per_receipt']}): ERC-20 transfer / Tallystick gas"
        )
        out.append(Target(name, ratio, TARGET_RATIO, True, "x"))
    return out


def _print(
    rows: list[dict[str, Any]],
    batches: dict[str, Any],
    baselines: dict[str, int],
    targets: list[Target],
) -> None:
    transfer, claim = baselines["erc20_transfer"], baselines["escrow_claim"]
    body = [
        [
            r["receipts"],
            r["requests_per_receipt"],
            f"{r['claim_gas_per_request']:,.0f}",
            f"{r['open_close_gas_per_request']:,.0f}",
            f"{transfer / r['claim_gas_per_request']:,.1f}x",
            f"{claim / r['claim_gas_per_request']:,.1f}x",
        ]
        for r in rows
    ]
    cols = ["N receipts", "R req/receipt", "claim gas/req", "open+close gas/req",
            "vs ERC-20 transfer", "vs claim per request"]  # fmt: skip
    console.print(table("Tallystick: claimMany gasUsed / (N x R), steady state", cols, body))
    first = [[n, f"{v['first_claim']:,}", f"{v['first_claim'] / n:,.0f}"]
             for n, v in batches["batches"].items()]  # fmt: skip
    console.print(
        table("First claim of fresh channels (cold storage)", ["N", "tx gas", "gas/receipt"], first)
    )
    base = [[k, f"{v:,}"] for k, v in baselines.items()]
    base += [["TallyEscrow.open (avg)", f"{sum(batches['open']) / len(batches['open']):,.0f}"]]
    base += [
        [
            "TallyEscrow.closeCooperative (avg)",
            f"{sum(batches['close']) / len(batches['close']):,.0f}",
        ]
    ]
    console.print(
        table("Per-request settlement baselines (gasUsed per request)", ["operation", "gas"], base)
    )
    console.print(
        "[dim]Baseline (i) is a plain MockUSDC transfer (x402's 'exact' scheme uses EIP-3009 "
        "transferWithAuthorization, which also verifies a signature and costs more), so the "
        "ratios are conservative.[/]"
    )
    show_targets("On-chain cost targets", targets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,10,50")
    parser.add_argument("--per-receipt", default="1,10,50,100")
    args = parser.parse_args()
    run(Config(_ints(args.batches), _ints(args.per_receipt)))


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


if __name__ == "__main__":
    main()
