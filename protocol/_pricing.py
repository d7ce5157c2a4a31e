"""Cost of cumulative totals at a channel's snapshot prices (§3)."""

from __future__ import annotations

from ._types import UINT64_MAX, UINT96_MAX, Prices, check_uint

TOKENS_PER_PRICE_UNIT = 1_000_000


def cost_of(input_tokens: int, output_tokens: int, prices: Prices) -> int:
    """``floor((I * pi + O * po) / 1e6)``, exactly as ``TallyEscrow.costOf``.

    Always call it on cumulative totals: flooring per request would under-pay the provider
    by up to one base unit per request.
    """
    check_uint("input_tokens", input_tokens, UINT64_MAX)
    check_uint("output_tokens", output_tokens, UINT64_MAX)
    check_uint("prices.input_per_m", prices.input_per_m, UINT96_MAX)
    check_uint("prices.output_per_m", prices.output_per_m, UINT96_MAX)
    # Both products fit in 160 bits, so the on-chain uint256 sum never overflows either.
    total = input_tokens * prices.input_per_m + output_tokens * prices.output_per_m
    return total // TOKENS_PER_PRICE_UNIT
