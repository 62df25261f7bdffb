"""The relay checksum against texts and CRCs written out by hand (docs/protocol.md)."""

from __future__ import annotations

import zlib

from relay.core.book import Book
from relay.core.checksum import book_checksum, checksum_text

WORKED = Book.from_payload(
    {
        "bids": [["100.5", "1.25"], ["100.0", "3"], ["99.5", "0.010"]],
        "asks": [["101.0", "2"], ["101.5", "0.5"]],
    }
)


def test_the_worked_example_of_the_protocol_doc() -> None:
    text = "100.5:1.25:101.0:2:100.0:3:101.5:0.5:99.5:0.010"
    assert checksum_text(WORKED.bid_levels(10), WORKED.ask_levels(10)) == text
    # zlib.crc32 of that text, also printed in docs/protocol.md
    assert book_checksum(WORKED) == 1158620720
    assert book_checksum(WORKED) == zlib.crc32(text.encode())


def test_only_the_top_levels_count() -> None:
    deep = WORKED.copy()
    deep.apply({"bids": [["1.0", "9"]], "asks": []})  # 4th bid: outside depth 3
    assert book_checksum(deep, depth=3) == book_checksum(WORKED, depth=3)
    assert book_checksum(deep, depth=4) != book_checksum(WORKED, depth=4)


def test_strings_not_values_are_summed() -> None:
    other = Book.from_payload({"bids": [["100.50", "1.25"]], "asks": []})
    same_value = Book.from_payload({"bids": [["100.5", "1.25"]], "asks": []})
    assert book_checksum(other) != book_checksum(same_value)


def test_an_empty_book_sums_to_zero() -> None:
    assert book_checksum(Book()) == 0


def test_a_one_sided_book_goes_on_with_the_other_side() -> None:
    asks_only = Book.from_payload({"bids": [], "asks": [["5", "1"], ["6", "2"]]})
    assert checksum_text(asks_only.bid_levels(10), asks_only.ask_levels(10)) == "5:1:6:2"
