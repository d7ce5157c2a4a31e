"""Gas report: deploys the contracts on a fresh anvil and measures gasUsed from real receipts.

Run as `python bench/gas.py`; prints a table with the targets and writes bench/results/gas.json.
Self-contained on purpose (plain web3 + eth-account, ABIs from protocol/abi/*.json).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from tallystick.devnet import DevnetError, Processes, start_anvil
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import Web3Exception
from web3.logs import DISCARD

ROOT = Path(__file__).resolve().parent.parent
ABI_DIR = ROOT / "protocol" / "abi"
RESULTS = ROOT / "bench" / "results" / "gas.json"
ETH = "0x0000000000000000000000000000000000000000"
CHALLENGE_PERIOD = 3600
PRICE_IN, PRICE_OUT = 100_000, 400_000  # per million tokens, base units
RECEIPT_FIELDS = ("channelId", "inputTokens", "outputTokens", "usageRoot")
RECEIPT_TYPES = {
    "Receipt": [
        {"name": "channelId", "type": "bytes32"},
        {"name": "inputTokens", "type": "uint64"},
        {"name": "outputTokens", "type": "uint64"},
        {"name": "usageRoot", "type": "bytes32"},
    ]
}
# (name, limit): the targets, checked on the steady-state figures (channels claimed before).
TARGETS = [
    ("claimMany x50 (per receipt)", 25_000),
    ("claim", 60_000),
    ("open (ETH)", 120_000),
    ("open (USDC)", 120_000),
    ("closeCooperative", 70_000),
]
NOTES = [
    "claim/open figures are gasUsed of the whole transaction; claimMany ones are per receipt.",
    "'first claim' rows write the channel's claim slot (and the provider's earnings) from zero.",
    "open (USDC) approves exactly the deposit first (as the SDK does): it includes the token's own"
    " transferFrom and the fee-on-transfer check.",
]


class BenchError(Exception):
    """A failure of the benchmark itself (anvil missing, a transaction reverted)."""


@dataclass
class Chain:
    w3: Web3
    deployer: LocalAccount
    registry: Contract
    escrow: Contract
    usdc: Contract


@contextlib.contextmanager
def anvil() -> Iterator[Web3]:
    """A fresh anvil on a free port (``tallystick.devnet``), stopped on exit (also on errors)."""
    with Processes() as procs:
        try:
            chain = start_anvil(procs)
        except DevnetError as exc:
            raise BenchError(str(exc)) from exc
        yield Web3(Web3.HTTPProvider(chain.url, request_kwargs={"timeout": 60}))


def _artifact(name: str) -> dict[str, Any]:
    path = ABI_DIR / f"{name}.json"
    if not path.exists():
        raise BenchError(f"{path} is missing: run `make abi`")
    return dict(json.loads(path.read_text()))


def _account(w3: Web3) -> LocalAccount:
    acct: LocalAccount = Account.create()
    w3.provider.make_request("anvil_setBalance", [acct.address, hex(10**24)])  # type: ignore[arg-type]
    return acct


def _send(w3: Web3, acct: LocalAccount, call: Any, value: int = 0) -> dict[str, Any]:
    """Signs and sends `call` (a contract function or constructor); returns the mined receipt."""
    try:
        nonce = w3.eth.get_transaction_count(acct.address)
        tx = call.build_transaction({"from": acct.address, "nonce": nonce, "value": value})
        signed = acct.sign_transaction(tx)
        tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
        receipt = dict(w3.eth.wait_for_transaction_receipt(tx_hash))
    except Web3Exception as exc:
        raise BenchError(f"{getattr(call, 'fn_name', 'deploy')}: {exc!r}") from exc
    if receipt["status"] != 1:
        raise BenchError(f"transaction reverted: {tx.get('to')} {tx['data'][:10]}")
    return receipt


def _salt() -> bytes:
    """A channel salt as the SDK picks it: 8 random bytes, right-aligned in the bytes32."""
    return bytes(24) + os.urandom(8)


def _deploy(w3: Web3, acct: LocalAccount, name: str, *args: Any) -> Contract:
    art = _artifact(name)
    factory = w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"])
    receipt = _send(w3, acct, factory.constructor(*args))
    return w3.eth.contract(address=receipt["contractAddress"], abi=art["abi"])


def deploy(w3: Web3) -> Chain:
    deployer = _account(w3)
    registry = _deploy(w3, deployer, "ProviderRegistry")
    escrow = _deploy(w3, deployer, "TallyEscrow", registry.address, CHALLENGE_PERIOD)
    usdc = _deploy(w3, deployer, "MockUSDC")
    return Chain(w3, deployer, registry, escrow, usdc)


def _domain(chain: Chain) -> dict[str, Any]:
    return {
        "name": "TallyEscrow",
        "version": "1",
        "chainId": chain.w3.eth.chain_id,
        "verifyingContract": chain.escrow.address,
    }


def _message(receipt: tuple[Any, ...]) -> dict[str, Any]:
    return dict(zip(RECEIPT_FIELDS, receipt, strict=True))


def sign_receipt(chain: Chain, key: LocalAccount, receipt: tuple[Any, ...]) -> bytes:
    signable = encode_typed_data(_domain(chain), RECEIPT_TYPES, _message(receipt))
    return bytes(key.sign_message(signable).signature)


class Bench:
    """Drives one provider and a few clients through every measured operation."""

    def __init__(self, chain: Chain) -> None:
        self.c = chain
        self.gas: dict[str, int] = {}
        self.provider = _account(chain.w3)
        self.client = _account(chain.w3)
        self.model_eth = b""
        self.model_usdc = b""

    def send(self, acct: LocalAccount, call: Any, value: int = 0, label: str | None = None) -> Any:
        receipt = _send(self.c.w3, acct, call, value)
        if label is not None:
            self.gas[label] = int(receipt["gasUsed"])
        return receipt

    def setup_provider(self) -> None:
        reg = self.c.registry.functions
        self.send(self.provider, reg.register("https://node.example:8000", "{}"), label="register")
        hash_ = Web3.keccak(text="tokenizer bundle")
        call = reg.listModel("SmolLM2-135M-Instruct", PRICE_IN, PRICE_OUT, ETH, hash_, 8192)
        self.send(self.provider, call, label="listModel")
        self.model_eth = Web3.keccak(text="SmolLM2-135M-Instruct")
        usdc = self.c.usdc.address
        self.send(
            self.provider, reg.listModel("SmolLM2-USDC", PRICE_IN, PRICE_OUT, usdc, hash_, 8192)
        )
        self.model_usdc = Web3.keccak(text="SmolLM2-USDC")

    def opened_id(self, receipt: Any) -> bytes:
        events = self.c.escrow.events.ChannelOpened().process_receipt(receipt, errors=DISCARD)
        return bytes(events[0]["args"]["channelId"])

    def open_eth(self, client: LocalAccount, label: str | None = None) -> bytes:
        amount = 10**18
        call = self.c.escrow.functions.open(
            self.provider.address, self.model_eth, ETH, amount, ETH, PRICE_IN, PRICE_OUT, _salt()
        )
        return self.opened_id(self.send(client, call, value=amount, label=label))

    def open_usdc(self, client: LocalAccount, amount: int, label: str | None = None) -> bytes:
        # A client that keeps a balance and approves exactly the deposit (no refund for zeroing it).
        self.send(client, self.c.usdc.functions.mint(client.address, 2 * amount))
        self.send(client, self.c.usdc.functions.approve(self.c.escrow.address, amount))
        usdc = self.c.usdc.address
        call = self.c.escrow.functions.open(
            self.provider.address, self.model_usdc, usdc, amount, ETH, PRICE_IN, PRICE_OUT, _salt()
        )
        return self.opened_id(self.send(client, call, label=label))

    def receipt(self, client: LocalAccount, channel: bytes, total: int) -> tuple[Any, bytes]:
        rec = (channel, total, total // 2, Web3.keccak(total.to_bytes(32, "big")))
        return rec, sign_receipt(self.c, client, rec)

    def check_digest(self, channel: bytes) -> None:
        """The contract's receiptDigest must equal eth-account's EIP-712 digest."""
        rec = (channel, 7, 9, b"\x01" * 32)
        signable = encode_typed_data(_domain(self.c), RECEIPT_TYPES, _message(rec))
        ours = Web3.keccak(b"\x19" + signable.version + signable.header + signable.body)
        theirs = bytes(self.c.escrow.functions.receiptDigest(rec).call())
        if ours != theirs:
            raise BenchError(f"receiptDigest mismatch: contract {theirs.hex()} != {ours.hex()}")

    def claim_many(self, batch: int, label: str) -> None:
        clients = [_account(self.c.w3) for _ in range(batch)]
        channels = [self.open_eth(cl) for cl in clients]
        esc = self.c.escrow.functions
        for round_, total in (("first", 1_000), ("steady", 2_000)):
            signed = [self.receipt(cl, ch, total) for cl, ch in zip(clients, channels, strict=True)]
            call = esc.claimMany([r for r, _ in signed], [s for _, s in signed])
            receipt = self.send(self.provider, call)
            skipped = self.c.escrow.events.ReceiptSkipped().process_receipt(receipt, errors=DISCARD)
            if skipped:
                raise BenchError(f"claimMany skipped {len(skipped)} receipts")
            name = label if round_ == "steady" else f"{label} first claim"
            self.gas[name] = int(receipt["gasUsed"]) // batch

    def run(self) -> dict[str, int]:
        esc = self.c.escrow.functions
        self.setup_provider()
        self.open_eth(self.client)  # salted ids, no counter: the first open costs what any does
        channel = self.open_eth(self.client, label="open (ETH)")
        self.check_digest(channel)
        self.open_usdc(self.client, 10**9, label="open (USDC) first USDC deposit")
        self.open_usdc(self.client, 10**9, label="open (USDC)")
        self.send(self.client, esc.topUp(channel, 10**17), value=10**17, label="topUp (ETH)")
        for total, label in ((1_000, "claim first claim"), (2_000, "claim")):
            rec, sig = self.receipt(self.client, channel, total)
            self.send(self.provider, esc.claim(rec, sig), label=label)
        for batch in (1, 10, 50):
            self.claim_many(batch, f"claimMany x{batch} (per receipt)")
        self.close_cooperative()
        self.close_unilateral()
        self.send(self.provider, esc.withdraw(ETH, self.provider.address), label="withdraw (ETH)")
        return self.gas

    def close_cooperative(self) -> None:
        channel = self.open_eth(self.client)
        rec, sig = self.receipt(self.client, channel, 3_000)
        self.send(self.provider, self.c.escrow.functions.claim(rec, sig))
        rec, client_sig = self.receipt(self.client, channel, 4_000)
        provider_sig = sign_receipt(self.c, self.provider, rec)
        call = self.c.escrow.functions.closeCooperative(rec, client_sig, provider_sig)
        self.send(self.provider, call, label="closeCooperative")

    def close_unilateral(self) -> None:
        channel = self.open_eth(self.client)
        rec, sig = self.receipt(self.client, channel, 3_000)
        self.send(self.provider, self.c.escrow.functions.claim(rec, sig))
        self.send(self.client, self.c.escrow.functions.requestClose(channel), label="requestClose")
        self.c.w3.provider.make_request("evm_increaseTime", [CHALLENGE_PERIOD])  # type: ignore[arg-type]
        self.c.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        self.send(self.client, self.c.escrow.functions.finalize(channel), label="finalize")


def report(gas: dict[str, int]) -> bool:
    """Prints the table; returns True when every target is met."""
    limits = dict(TARGETS)
    width = max(len(k) for k in gas) + 2
    print(f"{'operation':<{width}}{'gasUsed':>10}  {'target':>10}  result")
    ok = True
    for name, used in gas.items():
        limit = limits.get(name)
        verdict = "" if limit is None else ("PASS" if used <= limit else "FAIL")
        ok = ok and verdict != "FAIL"
        target = "" if limit is None else f"<= {limit:,}"
        print(f"{name:<{width}}{used:>10,}  {target:>10}  {verdict}")
    for note in NOTES:
        print(note)
    return ok


def main() -> int:
    try:
        with anvil() as w3:
            gas = Bench(deploy(w3)).run()
    except BenchError as exc:
        print(f"gas bench failed: {exc}", file=sys.stderr)
        return 1
    ok = report(gas)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    targets = {
        name: {"limit": lim, "gasUsed": gas[name], "pass": gas[name] <= lim}
        for name, lim in TARGETS
    }
    summary = {"gasUsed": gas, "targets": targets, "pass": ok}
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {os.path.relpath(RESULTS, Path.cwd())}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
