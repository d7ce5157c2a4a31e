"""Amounts in a payment token's own units: "1.5 USDC", "0.20 USDC / 1M input tokens".

The chain counts base units (wei, USDC's 10**-6). People read and type whole tokens, so the
CLIs read each token's ``symbol()`` and ``decimals()`` once (ETH, 18 for the zero address)
and convert at the edge. The input rule is unambiguous:

- digits alone (``1500000``) are base units;
- a number followed by the token's symbol (``1.5USDC``, ``1.5 USDC``, ``0.001 ETH``) is in
  whole tokens, and must name the token the amount is for;
- a bare decimal (``1.5``) is refused: it could be either.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from ._types import ETH

__all__ = [
    "ETH_INFO",
    "AmountSpec",
    "TokenInfo",
    "format_amount",
    "format_price",
    "parse_amount",
    "token_info",
]

_MINIMAL_ERC20 = [
    {
        "name": "symbol",
        "type": "function",
        "stateMutability": "view",
        "inputs": [],
        "outputs": [{"name": "", "type": "string"}],
    },
    {
        "name": "decimals",
        "type": "function",
        "stateMutability": "view",
        "inputs": [],
        "outputs": [{"name": "", "type": "uint8"}],
    },
]


@dataclass(frozen=True)
class TokenInfo:
    """A payment token as people name it: its address, symbol and decimals."""

    address: str
    symbol: str
    decimals: int

    @property
    def is_eth(self) -> bool:
        return int(self.address, 16) == 0


ETH_INFO = TokenInfo(ETH, "ETH", 18)
# Per Web3 object (weakly held, so a new connection never reads an old one's entries).
_CACHE: weakref.WeakKeyDictionary[Any, dict[str, TokenInfo]] = weakref.WeakKeyDictionary()


def token_info(w3: Any, address: str) -> TokenInfo:
    """``symbol`` and ``decimals`` of the token at ``address`` (ETH for the zero address).

    Read once per (chain, token) and cached. A token whose ``symbol``/``decimals`` cannot be
    read (no contract there, a non-standard token) is shown by its address with 0 decimals,
    i.e. in base units, so no amount is ever misread.
    """
    if int(address, 16) == 0:
        return ETH_INFO
    from eth_utils import to_checksum_address

    address = to_checksum_address(address)
    cache = _CACHE.setdefault(w3, {})
    found = cache.get(address)
    if found is not None:
        return found
    try:
        contract = w3.eth.contract(address=address, abi=_MINIMAL_ERC20)
        symbol = str(contract.functions.symbol().call()).strip()
        decimals = int(contract.functions.decimals().call())
        if not symbol or not re.fullmatch(r"[A-Za-z0-9._-]{1,16}", symbol) or decimals > 77:
            raise ValueError("unusable symbol or decimals")
        info = TokenInfo(address, symbol, decimals)
    except Exception:  # any failure: fall back to base units, never guess decimals
        info = TokenInfo(address, f"base units of {address}", 0)
    cache[address] = info
    return info


def format_amount(amount: int, info: TokenInfo) -> str:
    """``1500000`` of USDC (6 decimals) → ``"1.5 USDC"``; exact, no rounding."""
    if info.decimals == 0:
        return f"{amount} {info.symbol}"
    sign = "-" if amount < 0 else ""
    whole, frac = divmod(abs(amount), 10**info.decimals)
    text = str(whole)
    if frac:
        text += "." + str(frac).rjust(info.decimals, "0").rstrip("0")
    return f"{sign}{text} {info.symbol}"


def format_price(per_million: int, info: TokenInfo, kind: str) -> str:
    """A listing's price per million tokens: ``"0.2 USDC / 1M input tokens"``."""
    text = format_amount(per_million, info)
    number, _, symbol = text.partition(" ")
    if info.decimals >= 2:  # money reads with cents: 0.20, 3.00
        whole, _, frac = number.partition(".")
        number = f"{whole}.{frac.ljust(2, '0')}"
    return f"{number} {symbol} / 1M {kind} tokens"


_AMOUNT = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z][A-Za-z0-9._-]*)?\s*$")


@dataclass(frozen=True)
class AmountSpec:
    """An amount as typed: base units (``symbol`` None) or whole tokens of ``symbol``."""

    text: str
    value: Decimal
    symbol: str | None

    def base_units(self, info: TokenInfo) -> int:
        """The amount in ``info``'s base units; a symbol naming another token is refused."""
        if self.symbol is None:
            return int(self.value)
        if self.symbol.lower() != info.symbol.lower():
            raise ValueError(
                f"{self.text!r} is in {self.symbol} but this amount is paid in {info.symbol}"
                + (f" ({info.address})" if not info.is_eth else "")
            )
        scaled = self.value * (Decimal(10) ** info.decimals)
        if scaled != scaled.to_integral_value():
            raise ValueError(
                f"{self.text!r} has more decimals than {info.symbol} has ({info.decimals})"
            )
        return int(scaled)


def parse_amount(text: str) -> AmountSpec:
    """``"1500000"`` (base units), ``"1.5USDC"`` or ``"1.5 USDC"`` (whole tokens).

    ValueError for anything else, including a bare decimal.
    """
    m = _AMOUNT.match(text)
    if m is None:
        raise ValueError(
            f"{text!r} is not an amount: give base units (digits only, e.g. 1500000) or a "
            "number with the token's symbol (e.g. 1.5USDC or '1.5 USDC')"
        )
    number, symbol = m.group(1), m.group(2)
    try:
        value = Decimal(number)
    except InvalidOperation:  # pragma: no cover - the pattern admits only decimals
        raise ValueError(f"{text!r} is not a number") from None
    if symbol is None and "." in number:
        raise ValueError(
            f"{text!r} is ambiguous: give base units (digits only, e.g. 1500000) or whole "
            f"tokens with the symbol (e.g. {number}USDC or {number}ETH)"
        )
    return AmountSpec(text.strip(), value, symbol)
