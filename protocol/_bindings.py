"""Typed web3 bindings of ProviderRegistry, TallyEscrow and ERC-20 tokens.

Reads return frozen dataclasses; writes take an eth-account ``LocalAccount``, build and sign
the transaction locally (the node never holds keys), send it, wait for it to be mined and
return a ``TxResult`` with the decoded events. Every revert, whether found by
``eth_call``/``estimate_gas`` or by a mined transaction with status 0, becomes
``ContractError(name, args)``; an unreachable RPC becomes ``ChainUnavailable``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import IntEnum
from functools import cache
from typing import Any

import requests
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress, HexAddress, HexStr
from eth_utils import event_abi_to_log_topic, to_checksum_address
from web3 import Web3
from web3._utils.events import get_event_data
from web3.contract import Contract
from web3.exceptions import (
    ContractCustomError,
    ContractLogicError,
    ContractPanicError,
    TimeExhausted,
    TransactionNotFound,
    Web3RPCError,
)

from ._abi import load_artifact
from ._errors import ChainError, ChainUnavailable, ContractError
from ._ids import channel_id, new_salt
from ._revert import ARTIFACTS, decode_revert
from ._rpc import FailoverHTTPProvider, OnFailure, split_rpc_urls
from ._types import UINT96_MAX, Domain, Prices, Receipt, SignedReceipt, check_uint, checksum

ETH = "0x0000000000000000000000000000000000000000"
RECEIPT_TIMEOUT_S = 120


class ChannelStatus(IntEnum):
    """``ITallyEscrow.Status``."""

    NONE = 0
    OPEN = 1
    CLOSING = 2
    CLOSED = 3


@dataclass(frozen=True)
class Event:
    """A decoded log: event name, arguments by name, and where it was emitted."""

    name: str
    args: dict[str, Any]
    address: str
    block_number: int
    tx_hash: bytes
    log_index: int


@dataclass(frozen=True)
class SkippedReceipt:
    """A ``ReceiptSkipped`` event of ``claimMany`` with its reason decoded."""

    index: int
    channel_id: bytes
    reason: ContractError
    block_number: int


@dataclass(frozen=True)
class TxResult:
    """A mined, successful transaction; ``value`` is what the function returned, if useful."""

    tx_hash: bytes
    gas_used: int
    receipt: Any = field(repr=False)
    events: list[Event] = field(default_factory=list)
    value: Any = None

    def event(self, name: str) -> Event:
        """The first event called ``name`` (``KeyError`` if none)."""
        for ev in self.events:
            if ev.name == name:
                return ev
        raise KeyError(f"transaction emitted no {name} event")

    def events_named(self, name: str) -> list[Event]:
        """Every event called ``name``, in log order."""
        return [ev for ev in self.events if ev.name == name]

    @property
    def skipped(self) -> list[SkippedReceipt]:
        """The receipts ``claimMany`` skipped, with decoded reasons."""
        return [_skipped(ev) for ev in self.events_named("ReceiptSkipped")]


@dataclass(frozen=True)
class ProviderInfo:
    """``IProviderRegistry.Provider`` of ``address``."""

    address: str
    endpoint: str
    metadata: str
    registered: bool


@dataclass(frozen=True)
class Listing:
    """``IProviderRegistry.Listing`` of (``provider``, ``model_id``)."""

    provider: str
    model_id: bytes
    name: str
    input_price_per_m: int
    output_price_per_m: int
    token: str
    tokenizer_hash: bytes
    context_length: int
    active: bool
    model_hash: bytes = bytes(32)  # the served weights (§10.1); zero: no claim, no audit

    @property
    def prices(self) -> Prices:
        return Prices(self.input_price_per_m, self.output_price_per_m)


@dataclass(frozen=True)
class ChannelState:
    """``ITallyEscrow.ChannelView`` of ``channel_id``."""

    channel_id: bytes
    client: str
    provider: str
    token: str
    status: ChannelStatus
    input_price_per_m: int
    output_price_per_m: int
    deposit: int
    paid: int
    input_tokens: int
    output_tokens: int
    closes_at: int
    session_key: str

    @property
    def prices(self) -> Prices:
        return Prices(self.input_price_per_m, self.output_price_per_m)

    @property
    def remaining(self) -> int:
        """Deposit not yet paid to the provider."""
        return self.deposit - self.paid


# ------------------------------------------------------------------------------ connection


def connect(
    rpc_url: str | Sequence[str],
    timeout_s: float = 30.0,
    *,
    on_failure: OnFailure | None = None,
) -> Web3:
    """A Web3 on one or several RPC URLs (``"a,b"`` or a list) that answered ``eth_chainId``.

    Its provider is a ``FailoverHTTPProvider``: a URL that fails at the transport is counted
    (``provider.failures``, ``on_failure``) and the request goes to the next one. Answers are
    depth-checked before they are parsed: ``ChainError`` if nested too deeply. Every URL that
    answers must serve the same chain id (``ChainError`` otherwise); ``ChainUnavailable``
    when none answers.
    """
    urls = split_rpc_urls(rpc_url)
    provider = FailoverHTTPProvider(
        urls, request_kwargs={"timeout": timeout_s}, on_failure=on_failure
    )
    w3 = Web3(provider)
    try:
        w3.eth.chain_id  # noqa: B018 (the call is the reachability check)
    except (requests.RequestException, OSError, ValueError, Web3RPCError) as exc:
        raise ChainUnavailable(f"cannot reach the chain at {', '.join(urls)}: {exc}") from exc
    _same_chain(urls, timeout_s)
    return w3


def _same_chain(urls: list[str], timeout_s: float) -> None:
    # Failing over to an RPC of another chain would sign for, and read, the wrong chain.
    if len(urls) < 2:
        return
    seen: dict[int, str] = {}
    for url in urls:
        try:
            one = FailoverHTTPProvider([url], request_kwargs={"timeout": timeout_s})
            chain_id = Web3(one).eth.chain_id
        except (requests.RequestException, OSError, ValueError, Web3RPCError, ChainError):
            continue  # down now: failover will skip it too
        seen.setdefault(int(chain_id), url)
    if len(seen) > 1:
        detail = ", ".join(f"{u} is chain {c}" for c, u in seen.items())
        raise ChainError(f"the RPC URLs serve different chains: {detail}")


@contextmanager
def _rpc() -> Iterator[None]:
    # Translate transport failures and reverts at the boundary, for reads and writes alike.
    try:
        yield
    except (ContractCustomError, ContractLogicError, ContractPanicError) as exc:
        raise _contract_error(exc) from exc
    except requests.RequestException as exc:
        raise ChainUnavailable(f"chain RPC failed: {exc}") from exc
    except TimeExhausted as exc:
        raise ChainUnavailable(f"transaction not mined in time: {exc}") from exc


def _contract_error(exc: Exception) -> ContractError:
    data = getattr(exc, "data", None)
    if isinstance(data, dict):  # some nodes nest it: {"data": "0x..."}
        data = data.get("data")
    if isinstance(data, str) and data.startswith("0x"):
        return decode_revert(bytes.fromhex(data[2:]))
    return ContractError("Reverted", (str(exc),))


# ------------------------------------------------------------------------------ events


@cache
def _event_table() -> dict[bytes, dict[str, Any]]:
    table: dict[bytes, dict[str, Any]] = {}
    for name in ARTIFACTS:
        try:
            abi = load_artifact(name)["abi"]
        except FileNotFoundError:
            continue
        for item in abi:
            if item["type"] == "event" and not item.get("anonymous"):
                table.setdefault(bytes(event_abi_to_log_topic(item)), item)
    return table


def decode_logs(w3: Web3, logs: Sequence[Any]) -> list[Event]:
    """Decode every log whose event any artefact declares; others are ignored."""
    events = []
    for log in logs:
        if not log["topics"]:
            continue
        abi = _event_table().get(bytes(log["topics"][0]))
        if abi is None:
            continue
        data = get_event_data(w3.codec, abi, log)
        events.append(
            Event(
                name=data["event"],
                args={k: _plain(v) for k, v in data["args"].items()},
                address=to_checksum_address(data["address"]),
                block_number=int(data["blockNumber"]),
                tx_hash=bytes(data["transactionHash"]),
                log_index=int(data["logIndex"]),
            )
        )
    return events


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return bytes(value)  # HexBytes -> bytes, so equality with bytes literals is plain
    if isinstance(value, str) and value.startswith("0x") and len(value) == 42:
        return to_checksum_address(value)
    return value


def _skipped(ev: Event) -> SkippedReceipt:
    return SkippedReceipt(
        index=int(ev.args["index"]),
        channel_id=ev.args["channelId"],
        reason=decode_revert(ev.args["reason"]),
        block_number=ev.block_number,
    )


# ------------------------------------------------------------------------------ sending


class _NonceLocks:
    # One lock per sender, held from "read pending nonce" to "sent", so several sends in a row
    # (or from several threads) never reuse a nonce. Shared by every binding in the process.
    _guard = threading.Lock()
    _locks: dict[str, threading.Lock] = {}  # noqa: RUF012 (process-wide by design)

    @classmethod
    def of(cls, address: str) -> threading.Lock:
        with cls._guard:
            return cls._locks.setdefault(address, threading.Lock())


def transact(
    w3: Web3, account: LocalAccount, fn: Any, *, value: int = 0, gas: int | None = None
) -> TxResult:
    """Build, sign locally, send and wait for ``fn`` (a contract function or constructor)."""
    params: dict[str, Any] = {"from": account.address, "value": value}
    if gas is not None:
        params["gas"] = gas
    with _rpc():
        with _NonceLocks.of(account.address):
            params["nonce"] = w3.eth.get_transaction_count(account.address, "pending")
            tx = fn.build_transaction(params)  # estimates gas: most reverts surface here
            signed = account.sign_transaction(tx)
            tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
        receipt = _wait_for_receipt(w3, tx_hash)
    if receipt["status"] != 1:
        raise _replay_revert(w3, tx, receipt)
    return TxResult(
        tx_hash=bytes(tx_hash),
        gas_used=int(receipt["gasUsed"]),
        receipt=receipt,
        events=decode_logs(w3, receipt["logs"]),
    )


def _wait_for_receipt(w3: Web3, tx_hash: Any) -> Any:
    # Poll soon, then back off: an automining local chain has the receipt within milliseconds
    # (web3's fixed 0.1 s poll would dominate every test), a real chain within seconds.
    deadline = time.monotonic() + RECEIPT_TIMEOUT_S
    delay = 0.005
    while True:
        try:
            return w3.eth.get_transaction_receipt(tx_hash)
        except TransactionNotFound:
            if time.monotonic() > deadline:
                raise TimeExhausted(f"{tx_hash.hex()} not mined in {RECEIPT_TIMEOUT_S} s") from None
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


def _replay_revert(w3: Web3, tx: dict[str, Any], receipt: Any) -> ContractError:
    # A mined tx keeps no revert data; replaying it on the parent block's state recovers it. When
    # a transaction earlier in the same block caused the revert (a front-run `setPrice` before an
    # `open`), only the block's own state reproduces it, so that is tried second.
    call = {k: tx[k] for k in ("from", "to", "data", "value", "gas") if k in tx}
    block = int(receipt["blockNumber"])
    for state in (block - 1, block):
        try:
            w3.eth.call(call, block_identifier=state)  # type: ignore[arg-type]
        except (ContractCustomError, ContractLogicError, ContractPanicError) as exc:
            return _contract_error(exc)
    return ContractError("Reverted", (bytes(receipt["transactionHash"]),))


def _call(fn: Any, block: Any = "latest") -> Any:
    with _rpc():
        return fn.call(block_identifier=block)


def _contract(w3: Web3, name: str, address: str) -> Contract:
    address = ChecksumAddress(HexAddress(HexStr(checksum("address", address))))
    return w3.eth.contract(address=address, abi=load_artifact(name)["abi"])


def _logs(event: Any, from_block: int, to_block: Any, filters: dict[str, Any]) -> list[Any]:
    with _rpc():
        return list(
            event.get_logs(
                argument_filters={k: v for k, v in filters.items() if v is not None} or None,
                from_block=from_block,
                to_block=to_block,
            )
        )


def _events(w3: Web3, logs: list[Any]) -> list[Event]:
    return [
        Event(
            name=log["event"],
            args={k: _plain(v) for k, v in log["args"].items()},
            address=to_checksum_address(log["address"]),
            block_number=int(log["blockNumber"]),
            tx_hash=bytes(log["transactionHash"]),
            log_index=int(log["logIndex"]),
        )
        for log in logs
    ]


# ------------------------------------------------------------------------------ ERC-20


class Token:
    """An ERC-20 token (MockUSDC in tests): balances, allowances, approve, and mint for mocks."""

    def __init__(self, w3: Web3, address: str, artifact: str = "MockUSDC") -> None:
        self.w3 = w3
        self.contract = _contract(w3, artifact, address)
        self.address: str = self.contract.address

    def balance_of(self, owner: str) -> int:
        return int(_call(self.contract.functions.balanceOf(checksum("owner", owner))))

    def allowance(self, owner: str, spender: str) -> int:
        fn = self.contract.functions.allowance(
            checksum("owner", owner), checksum("spender", spender)
        )
        return int(_call(fn))

    def decimals(self) -> int:
        return int(_call(self.contract.functions.decimals()))

    def approve(self, account: LocalAccount, spender: str, amount: int) -> TxResult:
        fn = self.contract.functions.approve(checksum("spender", spender), amount)
        return transact(self.w3, account, fn)

    def mint(self, account: LocalAccount, to: str, amount: int) -> TxResult:
        """MockUSDC only: anyone can mint on a local chain."""
        return transact(self.w3, account, self.contract.functions.mint(checksum("to", to), amount))

    @contextmanager
    def exact_allowance(self, account: LocalAccount, spender: str, amount: int) -> Iterator[None]:
        """Let ``spender`` pull exactly ``amount`` in the block; restore the allowance if it raises.

        For a pull of exactly ``amount`` (an escrow deposit): once it succeeds no allowance is left
        behind, and when the block raises (a revert, a timeout) the allowance is set back to what
        it was, so a failed ``open`` leaves nothing another transaction could pull.
        """
        previous = self.allowance(account.address, spender)
        if previous != amount:
            self.approve(account, spender, amount)
        try:
            yield
        except BaseException:
            self._restore(account, spender, previous)
            raise

    def _restore(self, account: LocalAccount, spender: str, previous: int) -> None:
        try:
            if self.allowance(account.address, spender) != previous:
                self.approve(account, spender, previous)
        except ChainError:
            pass  # the caller's error is the one to raise; the allowance left is logged by no one


# ------------------------------------------------------------------------------ registry


class Registry:
    """``ProviderRegistry`` at ``address``."""

    def __init__(self, w3: Web3, address: str) -> None:
        self.w3 = w3
        self.contract = _contract(w3, "ProviderRegistry", address)
        self.address: str = self.contract.address

    # reads
    def provider_count(self) -> int:
        return int(_call(self.contract.functions.providerCount()))

    def provider_at(self, index: int) -> str:
        return to_checksum_address(_call(self.contract.functions.providerAt(index)))

    def providers(self) -> list[str]:
        """Every registered provider, in registration order."""
        return [self.provider_at(i) for i in range(self.provider_count())]

    def get_provider(self, provider: str) -> ProviderInfo:
        address = checksum("provider", provider)
        endpoint, metadata, registered = _call(self.contract.functions.getProvider(address))
        return ProviderInfo(address, endpoint, metadata, bool(registered))

    def models_of(self, provider: str) -> list[bytes]:
        ids = _call(self.contract.functions.modelsOf(checksum("provider", provider)))
        return [bytes(i) for i in ids]

    def get_listing(self, provider: str, model_id: bytes) -> Listing:
        address = checksum("provider", provider)
        raw = _call(self.contract.functions.getListing(address, model_id))
        pi, po, token, tokenizer_hash, context_length, active, name, weights = raw
        return Listing(
            provider=address,
            model_id=bytes(model_id),
            name=name,
            input_price_per_m=int(pi),
            output_price_per_m=int(po),
            token=to_checksum_address(token),
            tokenizer_hash=bytes(tokenizer_hash),
            context_length=int(context_length),
            active=bool(active),
            model_hash=bytes(weights),
        )

    def listings_of(self, provider: str) -> list[Listing]:
        """Every listing (active or not) of ``provider``."""
        return [self.get_listing(provider, m) for m in self.models_of(provider)]

    def is_listed(self, provider: str, model_id: bytes) -> bool:
        address = checksum("provider", provider)
        return bool(_call(self.contract.functions.isListed(address, model_id)))

    def quote(self, provider: str, model_id: bytes) -> tuple[Prices, str]:
        """What ``open`` would snapshot (reverts ``RegistryModelNotListed`` unless active)."""
        fn = self.contract.functions.quote(checksum("provider", provider), model_id)
        pi, po, token = _call(fn)
        return Prices(int(pi), int(po)), to_checksum_address(token)

    # writes
    def register(self, account: LocalAccount, endpoint: str, metadata: str = "") -> TxResult:
        return transact(self.w3, account, self.contract.functions.register(endpoint, metadata))

    def update_endpoint(self, account: LocalAccount, endpoint: str) -> TxResult:
        return transact(self.w3, account, self.contract.functions.updateEndpoint(endpoint))

    def update_metadata(self, account: LocalAccount, metadata: str) -> TxResult:
        return transact(self.w3, account, self.contract.functions.updateMetadata(metadata))

    def list_model(
        self,
        account: LocalAccount,
        name: str,
        prices: Prices,
        *,
        token: str = ETH,
        tokenizer_hash: bytes = bytes(32),
        context_length: int,
    ) -> TxResult:
        """List (or re-list) ``name``; ``value`` is its model id."""
        fn = self.contract.functions.listModel(
            name,
            prices.input_per_m,
            prices.output_per_m,
            checksum("token", token),
            tokenizer_hash,
            context_length,
        )
        result = transact(self.w3, account, fn)
        return _with_value(result, result.event("ModelListed").args["modelId"])

    def set_model_hash(self, account: LocalAccount, model_id: bytes, model_hash: bytes) -> TxResult:
        """Claim the weights a listing serves (§10.1); a re-listing clears the claim."""
        fn = self.contract.functions.setModelHash(model_id, model_hash)
        return transact(self.w3, account, fn)

    def report_audit(
        self, account: LocalAccount, provider: str, model_id: bytes, report_hash: bytes, uri: str
    ) -> TxResult:
        """Publish a failed audit (§10.7): its hash and where to fetch it; anyone may."""
        fn = self.contract.functions.reportAudit(
            checksum("provider", provider), model_id, report_hash, uri
        )
        return transact(self.w3, account, fn)

    def audit_reports(self, provider: str | None = None, from_block: int = 0) -> list[Event]:
        """``AuditReported`` events (of ``provider``'s listings, when given)."""
        event = self.contract.events.AuditReported
        arguments = {"provider": checksum("provider", provider)} if provider else None
        try:
            logs = event.get_logs(from_block=from_block, argument_filters=arguments)
        except Exception as exc:  # web3 raises several types for a node that refuses the filter
            raise ChainError(f"cannot read AuditReported events: {exc}") from exc
        return _events(self.w3, list(logs))

    def set_price(self, account: LocalAccount, model_id: bytes, prices: Prices) -> TxResult:
        fn = self.contract.functions.setPrice(model_id, prices.input_per_m, prices.output_per_m)
        return transact(self.w3, account, fn)

    def delist(self, account: LocalAccount, model_id: bytes) -> TxResult:
        return transact(self.w3, account, self.contract.functions.delist(model_id))


def _with_value(result: TxResult, value: Any) -> TxResult:
    return TxResult(result.tx_hash, result.gas_used, result.receipt, result.events, value)


# ------------------------------------------------------------------------------ escrow


class Escrow:
    """``TallyEscrow`` at ``address``."""

    def __init__(self, w3: Web3, address: str) -> None:
        self.w3 = w3
        self.contract = _contract(w3, "TallyEscrow", address)
        self.address: str = self.contract.address
        self._domain: Domain | None = None
        self._registry: Registry | None = None

    @property
    def domain(self) -> Domain:
        """The EIP-712 domain every signature for this escrow uses (§4)."""
        if self._domain is None:
            with _rpc():
                self._domain = Domain(int(self.w3.eth.chain_id), self.address)
        return self._domain

    @property
    def registry(self) -> Registry:
        """The registry this escrow quotes prices from."""
        if self._registry is None:
            self._registry = Registry(self.w3, _call(self.contract.functions.registry()))
        return self._registry

    # reads
    def challenge_period(self) -> int:
        return int(_call(self.contract.functions.challengePeriod()))

    def retired_key_valid_until(self, channel_id: bytes, key: str) -> int:
        """Until when (unix seconds, exclusive) a retired session key still signs claimable
        receipts of the channel; 0 for a key never retired from it (§7.3)."""
        fn = self.contract.functions.retiredKeyValidUntil(channel_id, checksum("key", key))
        return int(_call(fn))

    def channel_id(self, client: str, provider: str, model_id: bytes, salt: bytes) -> bytes:
        """The id ``open`` gives the channel of ``client`` opened with ``salt`` (§2)."""
        return channel_id(self.address, client, provider, model_id, salt)

    def get_channel(self, channel_id: bytes, block: int | str = "latest") -> ChannelState:
        """The channel as of ``block`` (a number, or "latest"/"safe"/"finalized")."""
        raw = _call(self.contract.functions.getChannel(channel_id), block)
        client, provider, token, status, pi, po, deposit, paid, i, o, closes_at, key = raw
        return ChannelState(
            channel_id=bytes(channel_id),
            client=to_checksum_address(client),
            provider=to_checksum_address(provider),
            token=to_checksum_address(token),
            status=ChannelStatus(status),
            input_price_per_m=int(pi),
            output_price_per_m=int(po),
            deposit=int(deposit),
            paid=int(paid),
            input_tokens=int(i),
            output_tokens=int(o),
            closes_at=int(closes_at),
            session_key=to_checksum_address(key),
        )

    def earnings(self, provider: str, token: str = ETH) -> int:
        fn = self.contract.functions.earnings(
            checksum("provider", provider), checksum("token", token)
        )
        return int(_call(fn))

    def cost_of(self, channel_id: bytes, input_tokens: int, output_tokens: int) -> int:
        return int(_call(self.contract.functions.costOf(channel_id, input_tokens, output_tokens)))

    def receipt_digest(self, receipt: Receipt) -> bytes:
        return bytes(_call(self.contract.functions.receiptDigest(receipt.as_tuple())))

    def receipt_typehash(self) -> bytes:
        return bytes(_call(self.contract.functions.RECEIPT_TYPEHASH()))

    # writes: client
    def open(
        self,
        account: LocalAccount,
        provider: str,
        model_id: bytes,
        amount: int,
        session_key: str = ETH,
        *,
        token: str,
        max_input_price_per_m: int,
        max_output_price_per_m: int,
        salt: bytes | None = None,
    ) -> TxResult:
        """Open a channel with ``amount`` of ``token``; ``value`` is its id.

        ``token`` and the price limits are required, with no default: pass the listing the
        caller accepted, so that a listing changed before the transaction is mined reverts it
        (``ContractError`` ``EscrowTokenMismatch(listed, expected)`` or
        ``EscrowPriceAboveLimit(input, output, maxInput, maxOutput)``) instead of reaching the
        channel. ``2**96 - 1`` is no price limit, for a caller that says so. An ERC-20 is
        approved for exactly ``amount`` right before the ``open`` and the previous allowance is
        restored if it fails. ``salt`` (random by default) fixes the id before it is mined:
        ``channel_id(client, provider, model_id, salt)``.
        """
        provider = checksum("provider", provider)
        limits = (
            check_uint("max_input_price_per_m", max_input_price_per_m, UINT96_MAX),
            check_uint("max_output_price_per_m", max_output_price_per_m, UINT96_MAX),
        )
        token = checksum("token", token)
        salt = new_salt() if salt is None else salt
        key = checksum("key", session_key)
        fn = self.contract.functions.open(provider, model_id, token, amount, key, *limits, salt)
        with self._funding(account, token, amount) as value:
            result = transact(self.w3, account, fn, value=value)
        return _with_value(result, result.event("ChannelOpened").args["channelId"])

    def top_up(self, account: LocalAccount, channel_id: bytes, amount: int) -> TxResult:
        """Add ``amount`` to the deposit (an ERC-20 approved exactly, as in ``open``)."""
        fn = self.contract.functions.topUp(channel_id, amount)
        with self._funding(account, self.get_channel(channel_id).token, amount) as value:
            return transact(self.w3, account, fn, value=value)

    @contextmanager
    def _funding(self, account: LocalAccount, token: str, amount: int) -> Iterator[int]:
        # ETH travels as msg.value; an ERC-20 is pulled by the escrow, so it needs an allowance,
        # granted for exactly this pull and taken back if the transaction fails.
        if int(token, 16) == 0:
            yield amount
            return
        with Token(self.w3, token).exact_allowance(account, self.address, amount):
            yield 0

    def authorize_session_key(
        self, account: LocalAccount, channel_id: bytes, session_key: str
    ) -> TxResult:
        fn = self.contract.functions.authorizeSessionKey(channel_id, checksum("key", session_key))
        return transact(self.w3, account, fn)

    def request_close(self, account: LocalAccount, channel_id: bytes) -> TxResult:
        """Start the challenge period; ``value`` is ``closesAt``."""
        result = transact(self.w3, account, self.contract.functions.requestClose(channel_id))
        return _with_value(result, result.event("CloseRequested").args["closesAt"])

    def finalize(self, account: LocalAccount, channel_id: bytes) -> TxResult:
        """Close after the challenge period; ``value`` is the refund."""
        result = transact(self.w3, account, self.contract.functions.finalize(channel_id))
        return _with_value(result, result.event("ChannelClosed").args["refund"])

    # writes: provider (claims), client or provider (cooperative close)
    def claim(self, account: LocalAccount, signed: SignedReceipt, **kw: Any) -> TxResult:
        """Claim one receipt (``account``: the channel's provider); ``value`` is the amount paid."""
        fn = self.contract.functions.claim(signed.receipt.as_tuple(), signed.signature)
        result = transact(self.w3, account, fn, **kw)
        return _with_value(result, _claimed_total(result))

    def claim_many(
        self, account: LocalAccount, signed: Sequence[SignedReceipt], **kw: Any
    ) -> TxResult:
        """Claim a batch as ``account`` (the provider); receipts refused (another provider's
        too) are in ``result.skipped``; ``value`` is the total paid."""
        fn = self.claim_many_function(signed)
        result = transact(self.w3, account, fn, **kw)
        return _with_value(result, _claimed_total(result))

    def claim_many_function(self, signed: Sequence[SignedReceipt]) -> Any:
        """The unsent ``claimMany`` call (for gas estimates)."""
        receipts = [s.receipt.as_tuple() for s in signed]
        return self.contract.functions.claimMany(receipts, [s.signature for s in signed])

    def estimate_claim_many_gas(self, sender: str, signed: Sequence[SignedReceipt]) -> int:
        with _rpc():
            return int(self.claim_many_function(signed).estimate_gas({"from": sender}))

    def close_cooperative(
        self, account: LocalAccount, signed: SignedReceipt, provider_signature: bytes
    ) -> TxResult:
        """Close with a final receipt signed by both sides, sent by the client or the provider;
        ``value`` is the client's refund."""
        fn = self.contract.functions.closeCooperative(
            signed.receipt.as_tuple(), signed.signature, provider_signature
        )
        result = transact(self.w3, account, fn)
        return _with_value(result, result.event("ChannelClosed").args["refund"])

    def withdraw(self, account: LocalAccount, token: str = ETH, to: str | None = None) -> TxResult:
        """Pull the caller's earnings in ``token``; ``value`` is the amount."""
        recipient = checksum("to", to or account.address)
        fn = self.contract.functions.withdraw(checksum("token", token), recipient)
        result = transact(self.w3, account, fn)
        return _with_value(result, result.event("Withdrawn").args["amount"])

    # event queries (the node's settlement worker and the client's discovery)
    def channels_opened(
        self,
        from_block: int = 0,
        to_block: Any = "latest",
        *,
        channel_id: bytes | None = None,
        client: str | None = None,
        provider: str | None = None,
    ) -> list[Event]:
        filters = {"channelId": channel_id, "client": client, "provider": provider}
        logs = _logs(self.contract.events.ChannelOpened, from_block, to_block, filters)
        return _events(self.w3, logs)

    def close_requests(
        self, from_block: int = 0, to_block: Any = "latest", *, channel_id: bytes | None = None
    ) -> list[Event]:
        logs = _logs(
            self.contract.events.CloseRequested, from_block, to_block, {"channelId": channel_id}
        )
        return _events(self.w3, logs)

    def key_retirements(
        self, from_block: int = 0, to_block: Any = "latest", *, channel_id: bytes | None = None
    ) -> list[Event]:
        """``SessionKeyRetired(channelId, sessionKey, validUntil)`` events (§7.3)."""
        logs = _logs(
            self.contract.events.SessionKeyRetired, from_block, to_block, {"channelId": channel_id}
        )
        return _events(self.w3, logs)

    def receipts_claimed(
        self, from_block: int = 0, to_block: Any = "latest", *, channel_id: bytes | None = None
    ) -> list[Event]:
        logs = _logs(
            self.contract.events.ReceiptClaimed, from_block, to_block, {"channelId": channel_id}
        )
        return _events(self.w3, logs)

    def receipts_skipped(
        self, from_block: int = 0, to_block: Any = "latest", *, channel_id: bytes | None = None
    ) -> list[SkippedReceipt]:
        logs = _logs(
            self.contract.events.ReceiptSkipped, from_block, to_block, {"channelId": channel_id}
        )
        return [_skipped(ev) for ev in _events(self.w3, logs)]

    def block_number(self) -> int:
        with _rpc():
            return int(self.w3.eth.block_number)


def _claimed_total(result: TxResult) -> int:
    return sum(int(ev.args["amount"]) for ev in result.events_named("ReceiptClaimed"))
