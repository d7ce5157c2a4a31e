"""On-chain cost per request: one ``claimMany`` of N receipts, each covering R requests, against
settling every request on its own.

    python -m bench.gas_per_request

Per-request baselines: (i) x402 "exact", an EIP-3009 ``transferWithAuthorization`` per request
(the client signs the authorization with a random nonce, a facilitator submits it), which is
what pay-per-request users pay today; (ii) a plain ERC-20 ``transfer`` (and ``transferFrom``),
the floor of any per-request payment; (iii) one TallyEscrow ``claim`` per request.

Everything runs on a fresh anvil with the real contracts; every figure is the ``gasUsed`` of a
mined transaction. Receipts are real: each covers R usage records chained with the protocol's
usage root and is countersigned by the channel's client. MockUSDC has no proxy, pause or
blacklist checks, so baseline (i) is cheaper here than on the real USDC: the ratios against it
are conservative.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tallystick.devnet import Market, funded_account, list_model, register_provider

from ._common import BenchError, Target, console, save, send_tx, show_targets, table
from ._setup import deployed

ETH = "0x0000000000000000000000000000000000000000"

__all__ = [
    "BASELINES",
    "Config",
    "measure_baselines",
    "run",
    "with_ratios",
    "x402_authorization",
    "x402_exact",
    "x402_message",
    "x402_settle_call",
]

PRICES = (10**12, 4 * 10**12)  # wei per million input / output tokens
PROMPT_TOKENS, COMPLETION_TOKENS = 40, 64  # one request's counts in the usage records
TARGET_RATIO = 50.0
TARGET_REQUESTS = 50  # "at 50 requests per claim"

# x402 "exact" on EVM: the EIP-712 domain the resource server publishes for USDC (FiatToken v2),
# and the validity window its reference client signs (validAfter backdated 10 min for clock skew,
# validBefore = now + maxTimeoutSeconds).
X402_DOMAIN = {"name": "USD Coin", "version": "2"}
X402_VALID_AFTER_SKEW, X402_MAX_TIMEOUT = 600, 300  # seconds
X402_PAYMENT = 1_000  # USDC base units: $0.001, one request's price
_TWA_TYPES = [
    {"name": "from", "type": "address"},
    {"name": "to", "type": "address"},
    {"name": "value", "type": "uint256"},
    {"name": "validAfter", "type": "uint256"},
    {"name": "validBefore", "type": "uint256"},
    {"name": "nonce", "type": "bytes32"},
]
# The facilitator submits a 65-byte ECDSA signature split into (v, r, s), as x402's does.
_TWA_VRS = (
    f"transferWithAuthorization({','.join(t['type'] for t in _TWA_TYPES)},uint8,bytes32,bytes32)"
)


@dataclass(frozen=True)
class Config:
    batches: tuple[int, ...] = (1, 10, 50)  # N: receipts per claimMany
    per_receipt: tuple[int, ...] = (1, 10, 50, 100)  # R: requests covered by one receipt
    baseline_samples: int = 5


class _Channels:
    """N open ETH channels of one client, with their usage chains as the node would sign them."""

    def __init__(self, chain: Market, provider: Any, client: Any, model: bytes, n: int) -> None:
        from tallystick.protocol import ZERO_ROOT

        self.chain, self.client = chain, client
        limits = {
            "token": ETH,
            "max_input_price_per_m": PRICES[0],
            "max_output_price_per_m": PRICES[1],
        }
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


def _claim_many(chain: Market, provider: Any, receipts: list[Any]) -> int:
    result = chain.escrow.claim_many(provider, receipts)
    if result.skipped:
        raise RuntimeError(f"claimMany skipped {len(result.skipped)} receipts")
    return int(result.gas_used)


def _market(chain: Market) -> tuple[Any, Any, bytes]:
    from tallystick.protocol import Prices

    provider, client = funded_account(chain.w3), funded_account(chain.w3)
    register_provider(chain.deployment, provider, "http://127.0.0.1:1")
    model = list_model(
        chain.deployment,
        provider,
        "bench-model",
        Prices(*PRICES),
        tokenizer_hash=b"\x01" * 32,
        context_length=8192,
    )
    return provider, client, model


def measure_batches(chain: Market, config: Config) -> dict[str, Any]:
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


def _close(chain: Market, provider: Any, channels: _Channels) -> int:
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


def measure_baselines(chain: Market, samples: int) -> dict[str, int]:
    """Per-request settlement: x402 exact, MockUSDC transfer / transferFrom, one escrow claim."""
    payer, payee, facilitator = (funded_account(chain.w3) for _ in range(3))
    usdc = chain.usdc
    usdc.mint(payer, payer.address, 10**15)
    usdc.mint(payer, payee.address, 1)  # steady state: the payee already holds a balance
    usdc.approve(payer, facilitator.address, 10**15)
    x402 = [x402_exact(chain, payer, facilitator, payee.address) for _ in range(samples)]
    transfer = [
        _erc20(chain, payer, "transfer", payee.address, X402_PAYMENT) for _ in range(samples)
    ]
    pull = [
        _erc20(chain, facilitator, "transferFrom", payer.address, payee.address, X402_PAYMENT)
        for _ in range(samples)
    ]
    _check_paid(chain, payee.address, 1 + 3 * samples * X402_PAYMENT)
    return {
        "x402_exact": _steady(x402),
        "erc20_transfer": _steady(transfer),
        "erc20_transferFrom": _steady(pull),
        "escrow_claim": _steady(_escrow_claims(chain, samples)),
    }


def _escrow_claims(chain: Market, samples: int) -> list[int]:
    provider, client, model = _market(chain)
    channels = _Channels(chain, provider, client, model, 1)
    return [chain.escrow.claim(provider, channels.receipts(1)[0]).gas_used for _ in range(samples)]


def _steady(gas: list[int]) -> int:
    # The first sample is a cold start (fresh storage slots); later ones differ only by calldata
    # zero bytes (random nonces and signatures), so report their median.
    return int(statistics.median_low(gas[1:] or gas))


def _check_paid(chain: Market, payee: str, expected: int) -> None:
    # A baseline that did not move the money would be a fake figure.
    balance = chain.usdc.balance_of(payee)
    if balance != expected:
        raise BenchError(f"per-request baselines paid {balance} units, expected {expected}")


def x402_authorization(chain: Market, payer: Any, to: str, value: int) -> dict[str, Any]:
    """An EIP-3009 authorization as x402's client builds it: random nonce, its validity window."""
    now = int(chain.w3.eth.get_block("latest")["timestamp"])
    return {
        "from": payer.address,
        "to": to,
        "value": value,
        "validAfter": now - X402_VALID_AFTER_SKEW,
        "validBefore": now + X402_MAX_TIMEOUT,
        "nonce": secrets.token_bytes(32),
    }


def x402_message(chain: Market, authorization: dict[str, Any]) -> Any:
    """The EIP-712 ``TransferWithAuthorization`` message for MockUSDC on this chain."""
    from eth_account.messages import encode_typed_data

    domain = {
        **X402_DOMAIN,
        "chainId": chain.w3.eth.chain_id,
        "verifyingContract": chain.usdc.address,
    }
    return encode_typed_data(
        full_message={
            "types": {
                "EIP712Domain": [
                    {"name": "name", "type": "string"},
                    {"name": "version", "type": "string"},
                    {"name": "chainId", "type": "uint256"},
                    {"name": "verifyingContract", "type": "address"},
                ],
                "TransferWithAuthorization": _TWA_TYPES,
            },
            "primaryType": "TransferWithAuthorization",
            "domain": domain,
            "message": authorization,
        }
    )


def x402_settle_call(chain: Market, authorization: dict[str, Any], signed: Any) -> Any:
    """The facilitator's ``transferWithAuthorization(..., v, r, s)`` call."""
    a = authorization
    fn = chain.usdc.contract.get_function_by_signature(_TWA_VRS)
    return fn(
        a["from"], a["to"], a["value"], a["validAfter"], a["validBefore"], a["nonce"],
        signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big"),
    )  # fmt: skip


def x402_exact(chain: Market, payer: Any, facilitator: Any, to: str) -> int:
    """One x402 "exact" payment: the payer signs, the facilitator submits; its gasUsed."""
    authorization = x402_authorization(chain, payer, to, X402_PAYMENT)
    signed = payer.sign_message(x402_message(chain, authorization))
    return send_tx(chain.w3, facilitator, x402_settle_call(chain, authorization, signed))


def _erc20(chain: Market, account: Any, fn: str, *args: Any) -> int:
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


# Baselines in the order the tables show them: the target's, then the floor, then the channel's.
BASELINES = {
    "x402_exact": "x402 exact (EIP-3009 transferWithAuthorization)",
    "erc20_transfer": "ERC-20 transfer",
    "erc20_transferFrom": "ERC-20 transferFrom",
    "escrow_claim": "TallyEscrow claim",
}
_RATIOS = ("x402_exact", "erc20_transfer", "escrow_claim")  # the "vs" columns


def with_ratios(rows: list[dict[str, Any]], baselines: dict[str, int]) -> list[dict[str, Any]]:
    """Each row plus ``vs_<baseline>``: how many times less gas per request than that baseline."""
    return [
        {**row, **{f"vs_{k}": baselines[k] / row["claim_gas_per_request"] for k in _RATIOS}}
        for row in rows
    ]


def run(config: Config | None = None) -> dict[str, Any]:
    """Measure, print and save ``gas_per_request.json``; returns the figures."""
    config = config or Config()
    with deployed() as chain:
        console.print("[bold]On-chain cost per request[/] (anvil, real contracts)")
        batches = measure_batches(chain, config)
        baselines = measure_baselines(chain, config.baseline_samples)
    rows = per_request(batches["batches"], batches["open"], batches["close"])
    rows = with_ratios(rows, baselines)
    targets = _targets(rows)
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


def _target_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The shapes the target names: N receipts x R requests = 50 requests in one claim."""
    return [r for r in rows if r["receipts"] * r["requests_per_receipt"] == TARGET_REQUESTS]


def _targets(rows: list[dict[str, Any]]) -> list[Target]:
    out = []
    for row in _target_rows(rows):
        name = (
            f"{TARGET_REQUESTS} requests per claim ({row['receipts']} receipt(s) x "
            f"{row['requests_per_receipt']}): x402 exact / Tallystick gas"
        )
        out.append(Target(name, row["vs_x402_exact"], TARGET_RATIO, True, "x"))
    return out


def _print(
    rows: list[dict[str, Any]],
    batches: dict[str, Any],
    baselines: dict[str, int],
    targets: list[Target],
) -> None:
    _print_grid(rows)
    first = [[n, f"{v['first_claim']:,}", f"{v['first_claim'] / n:,.0f}"]
             for n, v in batches["batches"].items()]  # fmt: skip
    console.print(
        table("First claim of fresh channels (cold storage)", ["N", "tx gas", "gas/receipt"], first)
    )
    _print_baselines(batches, baselines)
    _print_target_shapes(rows)
    show_targets("On-chain cost targets (vs x402 exact)", targets)


def _print_grid(rows: list[dict[str, Any]]) -> None:
    body = [
        [r["receipts"], r["requests_per_receipt"], f"{r['claim_gas_per_request']:,.0f}",
         f"{r['open_close_gas_per_request']:,.0f}", *(f"{r[f'vs_{k}']:,.1f}x" for k in _RATIOS)]
        for r in rows
    ]  # fmt: skip
    cols = ["N receipts", "R req/receipt", "claim gas/req", "open+close gas/req",
            "vs (i) x402 exact", "vs (ii) ERC-20 transfer", "vs (iii) claim/request"]  # fmt: skip
    console.print(table("Tallystick: claimMany gasUsed / (N x R), steady state", cols, body))


def _print_baselines(batches: dict[str, Any], baselines: dict[str, int]) -> None:
    base = [[BASELINES[k], f"{v:,}"] for k, v in baselines.items()]
    base += [["TallyEscrow.open (avg)", f"{sum(batches['open']) / len(batches['open']):,.0f}"]]
    close = sum(batches["close"]) / len(batches["close"])
    base += [["TallyEscrow.closeCooperative (avg)", f"{close:,.0f}"]]
    console.print(
        table("Per-request settlement baselines (gasUsed per request)", ["operation", "gas"], base)
    )
    console.print(
        "[dim](i) is what x402 'exact' costs per request: the facilitator submits the client's "
        "EIP-3009 authorization (signature check, a fresh random nonce written to storage, the "
        "transfer). MockUSDC has no proxy, pause or blacklist checks, so the real USDC costs "
        "more and the ratios against (i) are conservative. (ii) is the floor of any "
        "per-request payment.[/]"
    )


def _print_target_shapes(rows: list[dict[str, Any]]) -> None:
    body = [
        [f"{r['receipts']} x {r['requests_per_receipt']}", f"{r['claim_gas_per_request']:,.0f}",
         *(f"{r[f'vs_{k}']:,.1f}x" for k in _RATIOS)]
        for r in _target_rows(rows)
    ]  # fmt: skip
    cols = ["N receipts x R requests", "Tallystick gas/req", "vs (i) x402 exact",
            "vs (ii) ERC-20 transfer", "vs (iii) claim per request"]  # fmt: skip
    console.print(table(f"{TARGET_REQUESTS} requests per claim", cols, body))


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
