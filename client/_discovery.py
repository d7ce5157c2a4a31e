"""Finding providers: on-chain listings filtered by model and price, checked against the node.

A node's ``/v1/models`` must advertise a model exactly as its on-chain listing does (prices,
context length, tokenizer hash); the chain is the truth, so any difference is a
``ListingMismatch`` and the client does not open a channel.
"""

from __future__ import annotations

from ._chain import Chain, Offer
from ._errors import ListingMismatch, ProviderNotFound
from ._node import NodeClient

__all__ = ["check_node_listing", "find_offers"]


def find_offers(
    chain: Chain,
    model: str | None = None,
    max_input_price: int | None = None,
    max_output_price: int | None = None,
) -> list[Offer]:
    """Active listings, cheapest first (output price, then input price)."""
    offers = [
        listing
        for provider in chain.providers()
        for listing in chain.offers(provider)
        if listing.active
        and (model is None or listing.model == model)
        and (max_input_price is None or listing.prices.input_per_m <= max_input_price)
        and (max_output_price is None or listing.prices.output_per_m <= max_output_price)
    ]
    return sorted(offers, key=lambda o: (o.prices.output_per_m, o.prices.input_per_m))


def choose_offer(
    chain: Chain, model: str, provider: str | None = None, **limits: int | None
) -> Offer:
    """The listing of ``provider`` for ``model``, or the cheapest one; ``ProviderNotFound``."""
    offers = find_offers(chain, model, **limits)
    if provider is not None:
        offers = [o for o in offers if o.provider.lower() == _provider(chain, provider).lower()]
    if not offers:
        who = f"provider {provider}" if provider else "any provider"
        raise ProviderNotFound(f"{who} does not list model {model!r} (within the price limits)")
    return offers[0]


def _provider(chain: Chain, given: str) -> str:
    """A full provider address, or the one registered provider ``given`` is a prefix of."""
    text = given.lower()
    if len(text) == 42:
        return given
    if len(text.removeprefix("0x")) < 4:
        raise ProviderNotFound(f"{given!r}: give at least 4 hex digits of the provider address")
    wanted = text if text.startswith("0x") else "0x" + text
    found = [p for p in chain.providers() if p.lower().startswith(wanted)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise ProviderNotFound(f"no registered provider's address starts with {given}")
    raise ProviderNotFound(
        f"{given} is ambiguous: {len(found)} providers start so ({', '.join(found)})"
    )


def check_node_listing(node: NodeClient, listing: Offer) -> None:
    """Raise ``ListingMismatch`` unless the node's ``/v1/models`` agrees with ``listing``."""
    entry = next((m for m in node.models() if m.get("id") == listing.model), None)
    if entry is None:
        raise ListingMismatch(f"node {node.endpoint} does not serve {listing.model!r}")
    pricing = entry.get("pricing")
    if not isinstance(pricing, dict):
        pricing = {}
    got = {
        "input price": pricing.get("input_per_million"),
        "output price": pricing.get("output_per_million"),
        "context length": entry.get("context_length"),
        "tokenizer hash": str(entry.get("tokenizer_hash")).lower(),
    }
    expected = {
        "input price": listing.prices.input_per_m,
        "output price": listing.prices.output_per_m,
        "context length": listing.context_length,
        "tokenizer hash": "0x" + listing.tokenizer_hash.hex(),
    }
    if listing.model_hash != bytes(32):  # a claimed weights hash must be the one served
        got["model hash"] = str(entry.get("model_hash")).lower()
        expected["model hash"] = "0x" + listing.model_hash.hex()
    diffs = [f"{k}: chain {v}, node {got[k]}" for k, v in expected.items() if got[k] != v]
    if diffs:
        raise ListingMismatch(
            f"node {node.endpoint} advertises {listing.model!r} unlike its on-chain listing: "
            + "; ".join(diffs)
        )
