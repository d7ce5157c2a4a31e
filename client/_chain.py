"""What the client reads from and sends to the chain: listings, channels, ERC-20 approvals.

Built on web3 with the ABIs of ``tallystick.protocol`` (``load_artifact``). Reverts become
``ContractError(name, args)`` (the decoded custom error), an unreachable RPC
``ChainUnavailable``; both are ``tallystick.protocol`` errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import requests
from eth_abi import decode as abi_decode
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address
from tallystick.protocol import (
    ChainError,
    ChainUnavailable,
    ContractError,
    Domain,
    Prices,
    Receipt,
    load_artifact,
    model_id,
)
from web3 import Web3
from web3.exceptions import ContractCustomError, ContractLogicError, Web3RPCError
from web3.logs import DISCARD

__all__ = ["ETH", "STATUSES", "Chain", "ChainChannel", "Listing"]

ETH = "0x0000000000000000000000000000000000000000"
STATUSES = ("none", "open", "closing", "closed")
_ERC20_ABI = [
    {
        "type": "function",
        "name": n,
        "stateMutability": m,
        "inputs": i,
        "outputs": [{"name": "", "type": o}],
    }
    for n, m, i, o in [
        (
            "approve",
            "nonpayable",
            [{"name": "s", "type": "address"}, {"name": "a", "type": "uint256"}],
            "bool",
        ),
        (
            "allowance",
            "view",
            [{"name": "o", "type": "address"}, {"name": "s", "type": "address"}],
            "uint256",
        ),
        ("balanceOf", "view", [{"name": "o", "type": "address"}], "uint256"),
    ]
]


@dataclass(frozen=True)
class Listing:
    """A provider's on-chain offer of one model."""

    provider: str
    endpoint: str
    model: str
    model_id: bytes
    prices: Prices
    token: str
    tokenizer_hash: bytes
    context_length: int
    active: bool


@dataclass(frozen=True)
class ChainChannel:
    """``TallyEscrow.getChannel``: the on-chain truth about a channel."""

    client: str
    provider: str
    token: str
    status: str
    prices: Prices
    deposit: int
    paid: int
    input_tokens: int
    output_tokens: int
    closes_at: int


class Chain:
    """The registry and the escrow on one chain, seen by one client."""

    def __init__(self, w3: Web3, registry: str, escrow: str) -> None:
        self.w3 = w3
        self.registry = w3.eth.contract(
            address=to_checksum_address(registry), abi=load_artifact("ProviderRegistry")["abi"]
        )
        self.escrow = w3.eth.contract(
            address=to_checksum_address(escrow), abi=load_artifact("TallyEscrow")["abi"]
        )
        self._errors = _error_table([*self.registry.abi, *self.escrow.abi])
        self._chain_id: int | None = None

    @classmethod
    def connect(cls, rpc_url: str, registry: str, escrow: str) -> Chain:
        """Connect over HTTP; ``ChainUnavailable`` when nothing answers at ``rpc_url``."""
        w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
        chain = cls(w3, registry, escrow)
        chain.chain_id  # noqa: B018 (fail now, with a clear error, if the RPC is down)
        return chain

    @property
    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = int(self._read(lambda: self.w3.eth.chain_id))
        return self._chain_id

    @property
    def domain(self) -> Domain:
        return Domain(self.chain_id, self.escrow.address)

    # reads

    def providers(self) -> list[str]:
        count = self._call(self.registry.functions.providerCount())
        return [self._call(self.registry.functions.providerAt(i)) for i in range(count)]

    def listings(self, provider: str) -> list[Listing]:
        """Every model ``provider`` lists (active or not)."""
        info = self._call(self.registry.functions.getProvider(provider))
        ids = self._call(self.registry.functions.modelsOf(provider))
        return [self._listing(provider, info[0], bytes(mid)) for mid in ids]

    def listing(self, provider: str, model: str) -> Listing:
        info = self._call(self.registry.functions.getProvider(provider))
        return self._listing(provider, info[0], model_id(model))

    def _listing(self, provider: str, endpoint: str, mid: bytes) -> Listing:
        r = self._call(self.registry.functions.getListing(provider, mid))
        return Listing(
            provider=to_checksum_address(provider),
            endpoint=endpoint,
            model=r[6],
            model_id=mid,
            prices=Prices(r[0], r[1]),
            token=to_checksum_address(r[2]),
            tokenizer_hash=bytes(r[3]),
            context_length=r[4],
            active=r[5],
        )

    def channel(self, channel_id: bytes) -> ChainChannel:
        c = self._call(self.escrow.functions.getChannel(channel_id))
        return ChainChannel(
            client=c[0],
            provider=c[1],
            token=c[2],
            status=STATUSES[c[3]],
            prices=Prices(c[4], c[5]),
            deposit=c[6],
            paid=c[7],
            input_tokens=c[8],
            output_tokens=c[9],
            closes_at=c[10],
        )

    def challenge_period(self) -> int:
        return int(self._call(self.escrow.functions.challengePeriod()))

    def token_balance(self, token: str, owner: str) -> int:
        if int(token, 16) == 0:
            return int(self._read(lambda: self.w3.eth.get_balance(to_checksum_address(owner))))
        erc20 = self.w3.eth.contract(address=to_checksum_address(token), abi=_ERC20_ABI)
        return int(self._call(erc20.functions.balanceOf(owner)))

    # writes

    def open_channel(
        self, account: LocalAccount, provider: str, model: str, amount: int, token: str
    ) -> tuple[bytes, Any]:
        """Approve the escrow if needed, open; return the channel id and the tx receipt."""
        self._approve(account, token, amount)
        fn = self.escrow.functions.open(provider, model_id(model), amount, ETH)
        receipt = self._send(account, fn, value=amount if int(token, 16) == 0 else 0)
        events = self.escrow.events.ChannelOpened().process_receipt(receipt, errors=DISCARD)
        if not events:
            raise ChainError("open() was mined but emitted no ChannelOpened event")
        return bytes(events[0]["args"]["channelId"]), receipt

    def top_up(self, account: LocalAccount, channel_id: bytes, amount: int, token: str) -> Any:
        self._approve(account, token, amount)
        fn = self.escrow.functions.topUp(channel_id, amount)
        return self._send(account, fn, value=amount if int(token, 16) == 0 else 0)

    def close_cooperative(
        self, account: LocalAccount, receipt: Receipt, client_sig: bytes, provider_sig: bytes
    ) -> Any:
        fn = self.escrow.functions.closeCooperative(receipt.as_tuple(), client_sig, provider_sig)
        return self._send(account, fn)

    def request_close(self, account: LocalAccount, channel_id: bytes) -> Any:
        return self._send(account, self.escrow.functions.requestClose(channel_id))

    def finalize(self, account: LocalAccount, channel_id: bytes) -> Any:
        return self._send(account, self.escrow.functions.finalize(channel_id))

    def closed_refund(self, tx_receipt: Any) -> int:
        """The refund of the ``ChannelClosed`` event in a mined transaction."""
        events = self.escrow.events.ChannelClosed().process_receipt(tx_receipt, errors=DISCARD)
        return int(events[0]["args"]["refund"]) if events else 0

    def _approve(self, account: LocalAccount, token: str, amount: int) -> None:
        if int(token, 16) == 0:
            return
        erc20 = self.w3.eth.contract(address=to_checksum_address(token), abi=_ERC20_ABI)
        allowed = self._call(erc20.functions.allowance(account.address, self.escrow.address))
        if allowed < amount:
            self._send(account, erc20.functions.approve(self.escrow.address, amount))

    # plumbing: every web3 call goes through these, so foreign errors stop here

    def _call(self, fn: Any) -> Any:
        return self._read(lambda: fn.call())

    def _read(self, thunk: Any) -> Any:
        try:
            return thunk()
        except (ContractCustomError, ContractLogicError) as exc:
            raise self._decode(exc) from exc
        except (requests.exceptions.RequestException, OSError) as exc:
            url = getattr(self.w3.provider, "endpoint_uri", "")
            raise ChainUnavailable(
                f"cannot reach the chain RPC {url} ({type(exc).__name__})"
            ) from exc

    def _send(self, account: LocalAccount, fn: Any, value: int = 0) -> Any:
        def run() -> Any:
            tx = fn.build_transaction(
                {
                    "from": account.address,
                    "value": value,
                    "chainId": self.chain_id,
                    "nonce": self.w3.eth.get_transaction_count(account.address, "pending"),
                }
            )
            signed = account.sign_transaction(tx)
            tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
            return self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=120)

        try:
            receipt = self._read(run)
        except Web3RPCError as exc:
            raise ChainError(f"the chain refused the transaction: {_short(exc)}") from exc
        if receipt["status"] != 1:
            raise ChainError(f"transaction {receipt['transactionHash'].hex()} reverted")
        return receipt

    def _decode(self, exc: ContractCustomError | ContractLogicError) -> ChainError:
        data = exc.data if isinstance(exc.data, str) else ""
        raw = bytes.fromhex(data[2:]) if data.startswith("0x") else b""
        entry = self._errors.get(raw[:4])
        if entry is None:
            return ContractError("Revert", (str(exc),), raw)
        name, types = entry
        return ContractError(name, tuple(abi_decode(types, raw[4:])), raw)


def _error_table(abi: list[Any]) -> dict[bytes, tuple[str, list[str]]]:
    table = {}
    for item in abi:
        if item.get("type") == "error":
            types = [_abi_type(i) for i in item["inputs"]]
            table[keccak(text=f"{item['name']}({','.join(types)})")[:4]] = (item["name"], types)
    return table


def _abi_type(item: dict[str, Any]) -> str:
    return "uint8" if item.get("internalType", "").startswith("enum ") else str(item["type"])


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) < 200 else text[:200] + "…"
