"""The checksum algorithms, against strings written out by hand."""

from __future__ import annotations

import zlib

from relay.core.book import Book
from relay.replay.checks import (
    Verifier,
    checksum_matches,
    kraken_checksum,
    okx_checksum,
    quote_matches,
    top_matches,
)
from relay.replay.events import BookDiff, Event, Reference, Snapshot


def test_kraken_checksum_strips_dots_and_leading_zeros_asks_first() -> None:
    book = Book.from_payload(
        {
            "bids": [["0.05005", "0.00000500"], ["0.05000", "12.00000000"]],
            "asks": [["0.05010", "1.50000000"]],
        }
    )
    expected = "5010150000000" + "5005500" + "5000" + "1200000000"
    assert kraken_checksum(book) == zlib.crc32(expected.encode())


def test_kraken_checksum_takes_ten_levels_a_side() -> None:
    bids = [[f"{100 - i}.0", "1.0"] for i in range(12)]
    asks = [[f"{200 + i}.0", "2.0"] for i in range(12)]
    book = Book.from_payload({"bids": bids, "asks": asks})
    text = "".join(f"{200 + i}020" for i in range(10)) + "".join(f"{100 - i}010" for i in range(10))
    assert kraken_checksum(book) == zlib.crc32(text.encode())


def test_okx_checksum_interleaves_and_is_signed() -> None:
    book = Book.from_payload({"bids": [["3366.1", "7"], ["3366", "6"]], "asks": [["3366.8", "9"]]})
    crc = zlib.crc32(b"3366.1:7:3366.8:9:3366:6")
    assert okx_checksum(book) == (crc - 2**32 if crc >= 2**31 else crc)
    assert -(2**31) <= okx_checksum(book) < 2**31


def test_okx_checksum_of_a_crc_above_two_to_the_31_is_negative() -> None:
    # Search a tiny book whose unsigned CRC has the top bit set, to pin the conversion.
    for size in range(1, 200):
        book = Book.from_payload({"bids": [["1", str(size)]], "asks": []})
        crc = zlib.crc32(f"1:{size}".encode())
        if crc >= 2**31:
            assert okx_checksum(book) == crc - 2**32
            return
    raise AssertionError("no CRC with the top bit set found")


def test_checksum_matches_picks_the_venue_algorithm() -> None:
    book = Book.from_payload({"bids": [["1", "2"]], "asks": [["3", "4"]]})
    ok = Reference("okx", "X", 0, "checksum", checksum=okx_checksum(book))
    assert checksum_matches(book, ok)
    bad = Reference("kraken", "X", 0, "checksum", checksum=okx_checksum(book) + 1)
    assert not checksum_matches(book, bad)


def test_quotes_compare_numerically_and_size_only_when_given() -> None:
    assert quote_matches(("439.30", "1.0"), ("439.3", None))
    assert quote_matches(("439.30", "1.0"), ("439.3", "1"))
    assert not quote_matches(("439.30", "1.0"), ("439.3", "2"))
    assert not quote_matches(None, ("1", None))
    book = Book.from_payload({"bids": [["1", "2"]], "asks": [["3", "4"]]})
    assert top_matches(book, Reference("v", "X", 0, "top", bid=("1", "2"), ask=("3.0", None)))
    assert not top_matches(book, Reference("v", "X", 0, "top", bid=("1.5", None)))


def test_verifier_matches_binance_tickers_by_update_id() -> None:
    events: list[Event] = [
        # A bookTicker received before the snapshot and the diff it describes.
        Reference("binance-spot", "X", 1, "top", bid=("9", "1"), ask=("11", "1"), ids={"u": 12}),
        Snapshot("binance-spot", "X", 2, (("10", "1"),), (("11", "1"),), {"lastUpdateId": 10}),
        BookDiff("binance-spot", "X", 3, (("10", "0"), ("9", "1")), (), {"U": 11, "u": 13}),
        BookDiff("binance-spot", "X", 4, (("9", "2"),), (), {"U": 14, "u": 14}),
    ]
    verifier = Verifier().feed_all(events)
    # u=13: the ticker with u'=12 holds; u=14: the same ticker, but the size moved on.
    assert (verifier.tops.passed, verifier.tops.made) == (1, 2)
    assert (verifier.update_ids.passed, verifier.update_ids.made) == (2, 2)
