"""Amounts in a token's own units (issue 13): exact formatting and the unambiguous input rule."""

from __future__ import annotations

from decimal import Decimal

import pytest
from tallystick.protocol import ETH_INFO, TokenInfo, format_amount, format_price, parse_amount

USDC = TokenInfo("0x" + "11" * 20, "USDC", 6)


@pytest.mark.parametrize(
    ("amount", "info", "text"),
    [
        (1_500_000, USDC, "1.5 USDC"),
        (0, USDC, "0 USDC"),
        (1, USDC, "0.000001 USDC"),
        (10**15, ETH_INFO, "0.001 ETH"),
        (2**96 - 1, ETH_INFO, "79228162514.264337593543950335 ETH"),  # exact, no float
        (7, TokenInfo("0x" + "22" * 20, "base units of 0x22", 0), "7 base units of 0x22"),
    ],
)
def test_format_amount_is_exact(amount: int, info: TokenInfo, text: str) -> None:
    assert format_amount(amount, info) == text


def test_prices_read_with_cents() -> None:
    assert format_price(200_000, USDC, "input") == "0.20 USDC / 1M input tokens"
    assert format_price(3_000_000, USDC, "output") == "3.00 USDC / 1M output tokens"
    assert format_price(1_234_567, USDC, "input") == "1.234567 USDC / 1M input tokens"


@pytest.mark.parametrize(
    ("text", "base"),
    [("1500000", 1_500_000), ("1.5USDC", 1_500_000), ("1.5 USDC", 1_500_000), (".5usdc", 500_000)],
)
def test_parse_amount_forms(text: str, base: int) -> None:
    assert parse_amount(text).base_units(USDC) == base


def test_parse_amount_refusals() -> None:
    with pytest.raises(ValueError, match="ambiguous"):
        parse_amount("1.5")
    with pytest.raises(ValueError, match="not an amount"):
        parse_amount("-1")
    with pytest.raises(ValueError, match="is in ETH but this amount is paid in USDC"):
        parse_amount("1ETH").base_units(USDC)
    with pytest.raises(ValueError, match=r"more decimals than USDC has \(6\)"):
        parse_amount("0.0000001USDC").base_units(USDC)
    assert parse_amount("2 ETH").value == Decimal(2)
