"""cost_of (§3): floor of the cumulative cost, with strict bounds."""

import pytest
from tallystick.protocol import Prices, cost_of

U64 = 2**64 - 1
U96 = 2**96 - 1


@pytest.mark.parametrize(
    ("i", "o", "pi", "po", "expected"),
    [
        (0, 0, 5, 7, 0),
        (1, 0, 999_999, 0, 0),  # floors to zero below one base unit
        (1, 0, 1_000_000, 0, 1),
        (1, 1, 600_000, 400_000, 1),  # rounding is on the sum, not per component
        (1_000_000, 2_000_000, 3, 4, 11),
        (123_456, 654_321, 150_000, 600_000, (123_456 * 150_000 + 654_321 * 600_000) // 10**6),
        (U64, U64, U96, U96, (U64 * U96 * 2) // 10**6),
    ],
)
def test_cost_of_values(i: int, o: int, pi: int, po: int, expected: int) -> None:
    assert cost_of(i, o, Prices(pi, po)) == expected


def test_cumulative_rounding_never_accumulates() -> None:
    prices = Prices(1, 1)
    per_request = sum(cost_of(10, 10, prices) for _ in range(100_000))
    assert per_request == 0
    assert cost_of(10 * 100_000, 10 * 100_000, prices) == 2


@pytest.mark.parametrize(("i", "o"), [(-1, 0), (0, -1), (U64 + 1, 0), (0, U64 + 1)])
def test_token_bounds(i: int, o: int) -> None:
    with pytest.raises(ValueError, match="tokens must be in"):
        cost_of(i, o, Prices(1, 1))


@pytest.mark.parametrize(("pi", "po"), [(-1, 0), (0, -1), (U96 + 1, 0), (0, U96 + 1)])
def test_price_bounds(pi: int, po: int) -> None:
    with pytest.raises(ValueError, match="per_m must be in"):
        Prices(pi, po)


def test_non_integers_are_refused() -> None:
    with pytest.raises(ValueError, match="must be an integer"):
        cost_of(1.5, 0, Prices(1, 1))
    with pytest.raises(ValueError, match="must be an integer"):
        cost_of(True, 0, Prices(1, 1))
