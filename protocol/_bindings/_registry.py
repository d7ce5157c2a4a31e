"""``ProviderRegistry``: providers, their listings, prices, model hashes and audit reports."""

from __future__ import annotations

from typing import Any

from eth_account.signers.local import LocalAccount
from eth_utils import event_abi_to_log_topic, to_checksum_address
from web3 import Web3

from .._errors import ChainError
from .._types import ETH, Prices, checksum
from ._logs import decode_logs, event
from ._send import call, contract, transact
from ._translate import rpc
from ._values import Event, Listing, ProviderInfo, TxResult

_LISTING_EVENTS = ("ModelListed", "PriceUpdated", "ModelDelisted")


class Registry:
    """``ProviderRegistry`` at ``address``."""

    def __init__(self, w3: Web3, address: str) -> None:
        self.w3 = w3
        self.contract = contract(w3, "ProviderRegistry", address)
        self.address: str = self.contract.address

    # reads
    def provider_count(self) -> int:
        return int(call(self.contract.functions.providerCount()))

    def provider_at(self, index: int) -> str:
        return to_checksum_address(call(self.contract.functions.providerAt(index)))

    def providers(self) -> list[str]:
        """Every registered provider, in registration order."""
        return [self.provider_at(i) for i in range(self.provider_count())]

    def get_provider(self, provider: str) -> ProviderInfo:
        address = checksum("provider", provider)
        endpoint, metadata, registered = call(self.contract.functions.getProvider(address))
        return ProviderInfo(address, endpoint, metadata, bool(registered))

    def models_of(self, provider: str) -> list[bytes]:
        ids = call(self.contract.functions.modelsOf(checksum("provider", provider)))
        return [bytes(i) for i in ids]

    def get_listing(self, provider: str, model_id: bytes) -> Listing:
        address = checksum("provider", provider)
        raw = call(self.contract.functions.getListing(address, model_id))
        return Listing.from_abi(address, model_id, raw)

    def listing_changes(
        self, provider: str, from_block: int, to_block: Any = "latest"
    ) -> set[bytes]:
        """Model ids ``provider`` listed, re-priced or delisted in the block range (one query)."""
        abi: list[Any] = list(self.contract.abi)
        changed = [e for e in abi if e.get("type") == "event" and e["name"] in _LISTING_EVENTS]
        provider_topic = "0x" + "00" * 12 + checksum("provider", provider).lower()[2:]
        query = {
            "address": self.address,
            "fromBlock": from_block,
            "toBlock": to_block,
            "topics": [["0x" + event_abi_to_log_topic(e).hex() for e in changed], provider_topic],
        }
        with rpc():
            logs = self.w3.eth.get_logs(query)  # type: ignore[arg-type]
        return {bytes(e.args["modelId"]) for e in decode_logs(self.w3, logs)}

    def listings_of(self, provider: str) -> list[Listing]:
        """Every listing (active or not) of ``provider``."""
        return [self.get_listing(provider, m) for m in self.models_of(provider)]

    def is_listed(self, provider: str, model_id: bytes) -> bool:
        address = checksum("provider", provider)
        return bool(call(self.contract.functions.isListed(address, model_id)))

    def quote(self, provider: str, model_id: bytes) -> tuple[Prices, str]:
        """What ``open`` would snapshot (reverts ``RegistryModelNotListed`` unless active)."""
        fn = self.contract.functions.quote(checksum("provider", provider), model_id)
        pi, po, token = call(fn)
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
        return result.with_value(result.event("ModelListed").args["modelId"])

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
        reported = self.contract.events.AuditReported
        arguments = {"provider": checksum("provider", provider)} if provider else None
        try:
            logs = reported.get_logs(from_block=from_block, argument_filters=arguments)
        except Exception as exc:  # web3 raises several types for a node that refuses the filter
            raise ChainError(f"cannot read AuditReported events: {exc}") from exc
        return [event(log) for log in logs]

    def set_price(self, account: LocalAccount, model_id: bytes, prices: Prices) -> TxResult:
        fn = self.contract.functions.setPrice(model_id, prices.input_per_m, prices.output_per_m)
        return transact(self.w3, account, fn)

    def delist(self, account: LocalAccount, model_id: bytes) -> TxResult:
        return transact(self.w3, account, self.contract.functions.delist(model_id))
