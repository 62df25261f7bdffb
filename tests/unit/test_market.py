"""relay.market: the simulated market keeps a sane book, and its diffs rebuild that book."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest

from relay.core.book import Book
from relay.market import Instrument, Market, instruments

STEPS = 5000
DEPTH = 50


def test_instruments_are_the_defaults_then_generated_symbols() -> None:
    assert [i.symbol for i in instruments(5)] == [
        "BTC-USD",
        "ETH-USD",
        "SOL-USD",
        "SYM4-USD",
        "SYM5-USD",
    ]
    assert instruments(0) == []


@pytest.mark.parametrize(
    ("tick", "decimals"), [(1.0, 0), (0.5, 1), (0.05, 2), (0.01, 2), (0.001, 3)]
)
def test_instrument_decimals_follow_the_tick(tick: float, decimals: int) -> None:
    assert Instrument("X-USD", 100.0, tick).decimals == decimals


@pytest.mark.parametrize(
    ("tick", "ticks", "text"),
    [
        (0.5, 86001, "43000.5"),
        (0.5, 86000, "43000.0"),
        (0.05, 46000, "2300.00"),
        (0.05, 46001, "2300.05"),
        (0.01, 9501, "95.01"),
        (0.001, 10007, "10.007"),
        (1.0, 43000, "43000"),
    ],
)
def test_prices_are_formatted_on_the_tick_grid(tick: float, ticks: int, text: str) -> None:
    market = Market(Instrument("X-USD", 100.0, tick), random.Random(0), depth=5)
    assert market.price(ticks) == text


def test_the_same_seed_gives_the_same_market() -> None:
    first = Market(instruments(1)[0], random.Random(42), depth=DEPTH)
    second = Market(instruments(1)[0], random.Random(42), depth=DEPTH)
    assert first.book_payload() == second.book_payload()
    assert [first.step() for _ in range(300)] == [second.step() for _ in range(300)]


def test_a_fresh_market_has_depth_levels_a_side_around_the_price() -> None:
    market = Market(Instrument("BTC-USD", 43000.0, 0.5), random.Random(1), depth=10)
    payload = market.book_payload()
    assert len(payload["bids"]) == len(payload["asks"]) == 10
    assert payload["bids"][0][0] == "42999.5"
    assert payload["asks"][0][0] == "43000.5"


def sides(market: Market) -> tuple[int, int]:
    return max(market.bids), min(market.asks)


@pytest.mark.parametrize(("seed", "depth"), [(1, 200), (2, 12)])
@pytest.mark.parametrize("instrument", instruments(4), ids=lambda i: i.symbol)
def test_market_invariants_hold_and_its_diffs_rebuild_its_book(
    instrument: Instrument, seed: int, depth: int
) -> None:
    market = Market(instrument, random.Random(seed), depth=depth)
    start = market.book_payload()
    book = Book.from_payload(start)
    spelling: dict[Decimal, str] = {}
    tick = Decimal(str(instrument.tick))

    def check_price(text: str) -> None:
        value = Decimal(text)
        assert spelling.setdefault(value, text) == text, f"{value} written two ways"
        assert value % tick == 0, f"{text} is off the tick grid"
        assert value > 0

    for side in ("bids", "asks"):
        for price, size in start[side]:
            check_price(price)
            assert Decimal(size) > 0

    trade_ids: list[str] = []
    for _ in range(STEPS):
        best_bid, best_ask = market.price(max(market.bids)), market.price(min(market.asks))
        diff, trade = market.step()
        for side in ("bids", "asks"):
            for price, size in diff[side]:
                check_price(price)
                assert size == "0" or Decimal(size) > 0
        if trade is not None:
            trade_ids.append(trade["id"])
            check_price(trade["price"])
            assert trade["side"] in {"buy", "sell"}
            # The taker hits the best level of the other side.
            assert trade["price"] == (best_ask if trade["side"] == "buy" else best_bid)
            assert Decimal(trade["size"]) > 0
        book.apply(diff)

        low, high = sides(market)
        assert low < high, "market crossed"
        assert 0 < len(market.bids) <= depth
        assert 0 < len(market.asks) <= depth
        assert not book.is_crossed()
        assert len(book.bids) == len(market.bids)
        assert len(book.asks) == len(market.asks)

    assert trade_ids == [str(n) for n in range(1, len(trade_ids) + 1)]
    assert len(trade_ids) > STEPS // 10
    final = market.book_payload()
    for side in ("bids", "asks"):
        assert all(Decimal(size) > 0 for _, size in final[side])
    assert book.to_payload() == final
