"""relay.core.book: an L2 book that keeps the producer's strings and applies diffs atomically."""

from __future__ import annotations

from typing import Any

import pytest

from relay.core.book import Book, BookError


def book_of(bids: list[list[str]], asks: list[list[str]]) -> Book:
    return Book.from_payload({"bids": bids, "asks": asks})


def sample_book() -> Book:
    return book_of(
        bids=[["100.5", "1.25"], ["100.0", "2"], ["99.5", "3.000"]],
        asks=[["101.0", "0.5"], ["101.5", "4"], ["102.0", "1.1"]],
    )


def test_an_empty_book_has_no_levels() -> None:
    book = Book()
    assert book.to_payload() == {"bids": [], "asks": []}
    assert book.best_bid() is None
    assert book.best_ask() is None
    assert not book.is_crossed()


def test_levels_come_out_best_first_whatever_the_order_they_went_in() -> None:
    book = book_of(
        bids=[["99.25", "3"], ["101", "2"], ["100.5", "1"]],
        asks=[["103", "1"], ["102.75", "2"], ["104.5", "3"]],
    )
    assert book.bid_levels() == [("101", "2"), ("100.5", "1"), ("99.25", "3")]
    assert book.ask_levels() == [("102.75", "2"), ("103", "1"), ("104.5", "3")]
    assert book.best_bid() == ("101", "2")
    assert book.best_ask() == ("102.75", "2")


def test_prices_sort_by_value_not_as_text() -> None:
    book = book_of(bids=[["9.5", "1"], ["10", "1"], ["100", "1"]], asks=[])
    assert [p for p, _ in book.bid_levels()] == ["100", "10", "9.5"]
    book = book_of(bids=[], asks=[["100", "1"], ["9.5", "1"], ["10", "1"]])
    assert [p for p, _ in book.ask_levels()] == ["9.5", "10", "100"]


def test_to_payload_lists_both_sides_best_first() -> None:
    assert sample_book().to_payload() == {
        "bids": [["100.5", "1.25"], ["100.0", "2"], ["99.5", "3.000"]],
        "asks": [["101.0", "0.5"], ["101.5", "4"], ["102.0", "1.1"]],
    }


def test_producer_strings_are_kept_byte_for_byte() -> None:
    book = book_of(
        bids=[["43100.50", "1.2500"], ["43100.00", "0.10000000"]],
        asks=[["43101.0", "70"], ["43102", "1.50"]],
    )
    assert book.to_payload() == {
        "bids": [["43100.50", "1.2500"], ["43100.00", "0.10000000"]],
        "asks": [["43101.0", "70"], ["43102", "1.50"]],
    }


def test_a_diff_inserts_a_new_level_in_place() -> None:
    book = sample_book()
    book.apply({"bids": [["100.25", "9"]], "asks": [["101.25", "8"]]})
    assert book.bid_levels() == [
        ("100.5", "1.25"),
        ("100.25", "9"),
        ("100.0", "2"),
        ("99.5", "3.000"),
    ]
    assert book.ask_levels() == [
        ("101.0", "0.5"),
        ("101.25", "8"),
        ("101.5", "4"),
        ("102.0", "1.1"),
    ]


def test_a_diff_updates_the_size_of_an_existing_level() -> None:
    book = sample_book()
    book.apply({"bids": [["100.0", "5.5"]], "asks": [["101.5", "0.01"]]})
    assert book.bid_levels() == [("100.5", "1.25"), ("100.0", "5.5"), ("99.5", "3.000")]
    assert book.ask_levels() == [("101.0", "0.5"), ("101.5", "0.01"), ("102.0", "1.1")]


@pytest.mark.parametrize("zero", ["0", "0.00000000", "0.0", "0.000"])
def test_a_zero_size_removes_the_level(zero: str) -> None:
    book = sample_book()
    book.apply({"bids": [["100.5", zero]], "asks": [["101.5", zero]]})
    assert book.bid_levels() == [("100.0", "2"), ("99.5", "3.000")]
    assert book.ask_levels() == [("101.0", "0.5"), ("102.0", "1.1")]
    assert book.best_bid() == ("100.0", "2")


def test_removing_every_level_empties_the_book() -> None:
    book = sample_book()
    book.apply(
        {
            "bids": [["100.5", "0"], ["100.0", "0"], ["99.5", "0"]],
            "asks": [["101.0", "0"], ["101.5", "0"], ["102.0", "0"]],
        }
    )
    assert book == Book()
    assert book.to_payload() == {"bids": [], "asks": []}


def test_removing_a_level_that_is_not_there_changes_nothing() -> None:
    book = sample_book()
    book.apply({"bids": [["42", "0"]], "asks": [["100.5", "0"]]})
    assert book == sample_book()


def test_a_level_removed_then_added_again_comes_back() -> None:
    book = sample_book()
    book.apply({"asks": [["101.0", "0"]]})
    book.apply({"asks": [["101.0", "0.75"]]})
    assert book.ask_levels() == [("101.0", "0.75"), ("101.5", "4"), ("102.0", "1.1")]


def test_levels_of_one_diff_apply_in_order() -> None:
    book = sample_book()
    book.apply({"bids": [["100.0", "0"], ["100.0", "6"], ["99.5", "7"], ["99.5", "0"]]})
    assert book.bid_levels() == [("100.5", "1.25"), ("100.0", "6")]


def test_a_side_missing_from_a_diff_is_left_alone() -> None:
    book = sample_book()
    book.apply({"asks": [["101.0", "0"]]})
    assert book.bid_levels() == sample_book().bid_levels()
    book.apply({})
    assert book.ask_levels() == [("101.5", "4"), ("102.0", "1.1")]


def test_other_keys_of_a_diff_pass_without_error() -> None:
    book = sample_book()
    book.apply({"bids": [["100.5", "0"]], "checksum": 12345, "type": "l2update"})
    assert book.best_bid() == ("100.0", "2")


def test_the_same_price_written_another_way_is_the_same_level() -> None:
    book = book_of(bids=[["100.50", "1"]], asks=[])
    book.apply({"bids": [["100.5", "2"]]})
    assert book.bid_levels() == [("100.5", "2")]
    book.apply({"bids": [["100.500", "0"]]})
    assert book.bid_levels() == []


BAD_PAYLOADS: list[tuple[str, Any]] = [
    ("payload is a list", [["100", "1"]]),
    ("payload is a string", '{"bids": []}'),
    ("payload is None", None),
    ("side is a string", {"bids": "100,1"}),
    ("side is an object", {"asks": {"101": "1"}}),
    ("side is null", {"bids": None}),
    ("level is a bare string", {"bids": ["100"]}),
    ("level has one element", {"bids": [["100"]]}),
    ("level is empty", {"asks": [[]]}),
    ("level is an object", {"asks": [{"price": "101", "size": "1"}]}),
    ("price is a number", {"bids": [[100.5, "1"]]}),
    ("size is a number", {"bids": [["100.5", 1]]}),
    ("price is null", {"asks": [[None, "1"]]}),
    ("price is abc", {"bids": [["abc", "1"]]}),
    ("size is abc", {"asks": [["101", "abc"]]}),
    ("price is empty", {"bids": [["", "1"]]}),
    ("price is NaN", {"bids": [["NaN", "1"]]}),
    ("size is NaN", {"bids": [["100", "NaN"]]}),
    ("price is sNaN", {"asks": [["sNaN", "1"]]}),
    ("price is Infinity", {"asks": [["Infinity", "1"]]}),
    ("price is -Infinity", {"bids": [["-Infinity", "1"]]}),
    ("size is Infinity", {"asks": [["101", "Infinity"]]}),
    ("size is negative", {"bids": [["100", "-1"]]}),
    ("size is slightly negative", {"asks": [["101", "-0.00000001"]]}),
    # Atomicity: good levels come before the bad one, on the same side or the other one.
    ("bad level after good ones", {"bids": [["100.5", "0"], ["100.25", "5"], ["x", "1"]]}),
    ("good bids, bad asks", {"bids": [["100.0", "0"], ["98", "1"]], "asks": [["101.0"]]}),
    ("good asks, bad bids", {"bids": [["100", "-2"]], "asks": [["101.0", "0"], ["100.9", "1"]]}),
]


@pytest.mark.parametrize(
    "payload", [p for _, p in BAD_PAYLOADS], ids=[name for name, _ in BAD_PAYLOADS]
)
def test_a_malformed_diff_raises_and_leaves_the_book_untouched(payload: Any) -> None:
    book = sample_book()
    with pytest.raises(BookError):
        book.apply(payload)
    assert book == sample_book()
    assert book.to_payload() == sample_book().to_payload()
    # The book still works as before after the rejected diff.
    book.apply({"bids": [["100.5", "0"]]})
    assert book.best_bid() == ("100.0", "2")


@pytest.mark.parametrize(
    "payload", [p for _, p in BAD_PAYLOADS], ids=[name for name, _ in BAD_PAYLOADS]
)
def test_a_malformed_snapshot_raises(payload: Any) -> None:
    with pytest.raises(BookError):
        Book.from_payload(payload)


@pytest.mark.parametrize("price", ["1_000.5", "\u0661\u0660\u0660"])
def test_a_price_that_is_not_a_plain_decimal_string_is_rejected(price: str) -> None:
    book = sample_book()
    with pytest.raises(BookError):
        book.apply({"bids": [[price, "1"]]})
    assert book == sample_book()


@pytest.mark.parametrize(
    ("best_bid", "best_ask", "crossed"),
    [("100", "101", False), ("100.99", "101", False), ("101", "101", True), ("102", "101", True)],
)
def test_is_crossed_compares_best_bid_and_best_ask(
    best_bid: str, best_ask: str, crossed: bool
) -> None:
    book = book_of(bids=[[best_bid, "1"], ["50", "1"]], asks=[[best_ask, "1"], ["200", "1"]])
    assert book.is_crossed() is crossed


def test_a_one_sided_book_is_not_crossed() -> None:
    assert not book_of(bids=[["100", "1"]], asks=[]).is_crossed()
    assert not book_of(bids=[], asks=[["100", "1"]]).is_crossed()


def test_is_crossed_follows_the_top_of_book_as_it_changes() -> None:
    book = sample_book()
    book.apply({"bids": [["101.0", "1"]]})
    assert book.is_crossed()
    book.apply({"asks": [["101.0", "0"]]})
    assert not book.is_crossed()


def test_depth_limits_levels_best_first() -> None:
    book = sample_book()
    assert book.bid_levels(2) == [("100.5", "1.25"), ("100.0", "2")]
    assert book.ask_levels(2) == [("101.0", "0.5"), ("101.5", "4")]
    assert book.bid_levels(1) == [("100.5", "1.25")]
    assert book.ask_levels(1) == [("101.0", "0.5")]


def test_depth_zero_gives_no_levels_and_a_large_depth_gives_all() -> None:
    book = sample_book()
    assert book.bid_levels(0) == []
    assert book.ask_levels(0) == []
    assert book.bid_levels(10) == book.bid_levels() == book.bid_levels(None)
    assert book.ask_levels(10) == book.ask_levels() == book.ask_levels(None)
    assert len(book.bid_levels(3)) == 3


def test_a_copy_is_equal_and_independent() -> None:
    original = sample_book()
    copy = original.copy()
    assert copy == original
    assert copy is not original

    copy.apply({"bids": [["100.5", "0"], ["100.75", "1"]], "asks": [["101.0", "9"]]})
    assert original == sample_book()
    assert original.best_bid() == ("100.5", "1.25")

    original.apply({"asks": [["101.0", "0"], ["100.9", "2"]]})
    assert copy.ask_levels() == [("101.0", "9"), ("101.5", "4"), ("102.0", "1.1")]
    assert copy.bid_levels() == [("100.75", "1"), ("100.0", "2"), ("99.5", "3.000")]


def test_books_with_the_same_levels_are_equal_whatever_the_history() -> None:
    direct = book_of(bids=[["100", "1"]], asks=[["101", "2"]])
    built = Book()
    built.apply({"bids": [["99", "5"], ["100", "3"]]})
    built.apply({"bids": [["99", "0"], ["100", "1"]], "asks": [["101", "2"], ["102", "1"]]})
    built.apply({"asks": [["102", "0"]]})
    assert built == direct


@pytest.mark.parametrize(
    "other",
    [
        {"bids": [["100", "1.5"]], "asks": [["101", "2"]]},  # another size
        {"bids": [["100", "1.0"]], "asks": [["101", "2"]]},  # same size, other string
        {"bids": [["100", "1"]], "asks": []},  # a level less
        {"bids": [["100", "1"]], "asks": [["101", "2"], ["102", "1"]]},  # a level more
        {"bids": [["101", "2"]], "asks": [["100", "1"]]},  # sides swapped
    ],
)
def test_books_that_differ_are_not_equal(other: dict[str, list[list[str]]]) -> None:
    book = book_of(bids=[["100", "1"]], asks=[["101", "2"]])
    assert book != Book.from_payload(other)


def test_a_book_is_not_equal_to_its_payload() -> None:
    book = sample_book()
    assert book != book.to_payload()
