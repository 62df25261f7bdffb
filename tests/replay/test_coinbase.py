"""Coinbase level2 + ticker + matches: tickers agree with the book, trade ids contiguous."""

from __future__ import annotations

from relay.replay.venues import coinbase

from .conftest import verified

DIR = "coinbase_cryptofeed"


def test_every_ticker_after_the_first_agrees_with_the_book() -> None:
    verifier = verified(DIR, coinbase.VENUE)
    # 107 tickers, the first of each of the 10 products skipped (stale at subscribe).
    assert verifier.counts["Reference"] == 97
    assert (verifier.tops.passed, verifier.tops.made) == (97, 97)


def test_trade_ids_are_contiguous_per_product() -> None:
    verifier = verified(DIR, coinbase.VENUE)
    # 97 matches, each following the previous trade of its product (the first one
    # follows the product's last_match).
    assert verifier.counts["Trade"] == 97 + 10
    assert (verifier.trade_ids.passed, verifier.trade_ids.made) == (97, 97)


def test_book_is_never_crossed() -> None:
    verifier = verified(DIR, coinbase.VENUE)
    assert verifier.counts["Snapshot"] == 10
    assert verifier.counts["BookDiff"] == 9719
    assert verifier.crossed.passed == verifier.crossed.made == 9729
