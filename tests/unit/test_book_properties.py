"""Properties of Book and Channel over random books and random diff sequences.

(a) Book agrees with a plain reference model after every diff.
(b) Snapshot at any seq k plus the updates k+1..n equals the book that applied 1..n, both
    for Book alone and through Channel at the frame level (contract rule 2).
"""

from __future__ import annotations

from decimal import Decimal

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from wsdecode import message, text_payload

from relay.core.book import Book, _parse_level, price_key
from relay.core.channel import Applied, Channel, Kind
from relay.core.entry import StreamEntry

TICK = Decimal("0.25")
ZEROS = ("0", "0.0", "0.00000000")
PROPERTY_SETTINGS = settings(max_examples=120, deadline=None)

Diff = dict[str, list[list[str]]]
Side = dict[int, str]  # tick index -> size string


def price(tick: int) -> str:
    """One tick, one string, always the same (as the contract asks of producers)."""
    return str(tick * TICK)


nonzero_sizes = st.integers(min_value=1, max_value=50_000).map(
    lambda n: f"{n // 10_000}.{n % 10_000:04d}"
)
sizes = st.one_of(st.sampled_from(ZEROS), nonzero_sizes)
ticks = st.integers(min_value=1, max_value=60)
# A Channel refuses a crossed book (it cannot be the producer's), so its books keep every
# bid below every ask; Book alone is tested over the whole grid.
bid_ticks = st.integers(min_value=1, max_value=30)
ask_ticks = st.integers(min_value=31, max_value=60)


def levels(
    size: st.SearchStrategy[str], where: st.SearchStrategy[int] = ticks
) -> st.SearchStrategy[list[tuple[int, str]]]:
    return st.lists(st.tuples(where, size), max_size=6)


def to_diff(bids: list[tuple[int, str]], asks: list[tuple[int, str]]) -> Diff:
    return {
        "bids": [[price(t), s] for t, s in bids],
        "asks": [[price(t), s] for t, s in asks],
    }


initial_books = st.builds(to_diff, levels(nonzero_sizes), levels(nonzero_sizes))
diffs = st.builds(to_diff, levels(sizes), levels(sizes))
diff_sequences = st.lists(diffs, max_size=25)
uncrossed_books = st.builds(
    to_diff, levels(nonzero_sizes, bid_ticks), levels(nonzero_sizes, ask_ticks)
)
uncrossed_sequences = st.lists(
    st.builds(to_diff, levels(sizes, bid_ticks), levels(sizes, ask_ticks)), max_size=25
)


def model_apply(model: Side, side: list[list[str]]) -> None:
    for raw_price, size in side:
        tick = int(Decimal(raw_price) / TICK)
        if size in ZEROS:
            model.pop(tick, None)
        else:
            model[tick] = size


def model_levels(model: Side, *, descending: bool) -> list[tuple[str, str]]:
    return [(price(t), model[t]) for t in sorted(model, reverse=descending)]


@PROPERTY_SETTINGS
@given(initial=initial_books, steps=diff_sequences)
def test_book_matches_a_reference_model_after_every_diff(initial: Diff, steps: list[Diff]) -> None:
    bids: Side = {}
    asks: Side = {}
    book = Book()
    for diff in [initial, *steps]:
        book.apply(diff)
        model_apply(bids, diff["bids"])
        model_apply(asks, diff["asks"])
        assert book.bid_levels() == model_levels(bids, descending=True)
        assert book.ask_levels() == model_levels(asks, descending=False)
        expected = Book.from_payload(
            {
                "bids": [list(level) for level in model_levels(bids, descending=True)],
                "asks": [list(level) for level in model_levels(asks, descending=False)],
            }
        )
        assert book == expected


@PROPERTY_SETTINGS
@given(initial=initial_books, steps=diff_sequences, data=st.data())
def test_snapshot_at_any_seq_plus_the_following_diffs_is_the_full_book(
    initial: Diff, steps: list[Diff], data: st.DataObject
) -> None:
    full = Book.from_payload(initial)
    snapshot: Diff | None = None
    k = data.draw(st.integers(min_value=0, max_value=len(steps)), label="k")
    for seq, diff in enumerate(steps, start=1):
        if seq == k + 1:
            snapshot = full.to_payload()
        full.apply(diff)
    if snapshot is None:  # k == n: the snapshot is the final book
        snapshot = full.to_payload()

    # Through the wire: the snapshot is JSON, and so is every diff.
    rebuilt = Book.from_payload(orjson.loads(orjson.dumps(snapshot)))
    for diff in steps[k:]:
        rebuilt.apply(orjson.loads(orjson.dumps(diff)))
    assert rebuilt == full
    assert rebuilt.to_payload() == full.to_payload()


def stream_entry(seq: int, data: bytes) -> StreamEntry:
    return StreamEntry(
        f"{1_700_000_000_000 + seq}-0",
        {
            b"seq": str(seq).encode(),
            b"ts": str(1_700_000_000_000_000 + seq).encode(),
            b"data": data,
        },
    )


@PROPERTY_SETTINGS
@given(initial=uncrossed_books, steps=uncrossed_sequences, data=st.data())
def test_channel_reset_at_any_seq_then_fed_the_rest_has_the_full_book(
    initial: Diff, steps: list[Diff], data: st.DataObject
) -> None:
    # seq 0 is the initial book; entry seq i carries steps[i - 1].
    books = [Book.from_payload(initial)]
    for diff in steps:
        book = books[-1].copy()
        book.apply(diff)
        books.append(book)
    full = books[-1]
    k = data.draw(st.integers(min_value=0, max_value=len(steps)), label="k")

    channel = Channel("book.PROP-1", Kind.BOOK, history=len(steps) + 1, trades_kept=0)
    state = orjson.loads(orjson.dumps(books[k].to_payload()))
    channel.reset(epoch="e1", seq=k, ts=1_700_000_000_000_000 + k, state=state)

    seen: list[int] = []
    for seq in range(k + 1, len(steps) + 1):
        raw = orjson.dumps(steps[seq - 1])
        outcome = channel.apply(stream_entry(seq, raw))
        assert isinstance(outcome, Applied)
        frame = message(outcome.frame)
        assert frame["type"] == "update"
        assert frame["channel"] == "book.PROP-1"
        assert text_payload(outcome.frame).endswith(b',"data":' + raw + b"}")
        seen.append(frame["seq"])
        assert channel.book == books[seq]

    assert seen == list(range(k + 1, len(steps) + 1))
    assert channel.seq == len(steps)
    assert channel.book == full
    snapshot = message(channel.snapshot())
    assert snapshot["seq"] == len(steps)
    assert snapshot["data"] == full.to_payload()


# Plain decimals as producers write them, leading and trailing zeros included.
plain_decimals = st.builds(
    lambda head, tail: head if tail is None else f"{head}.{tail}",
    st.from_regex(r"[0-9]{1,12}", fullmatch=True),
    st.none() | st.from_regex(r"[0-9]{1,12}", fullmatch=True),
)


@given(plain_decimals, plain_decimals)
@settings(max_examples=2000, deadline=None)
def test_price_keys_order_and_equal_as_the_numbers_do(a: str, b: str) -> None:
    ka, kb = price_key(a), price_key(b)
    assert _parse_level([a, "1"])[0] == ka  # the book's own (inlined) key is the same
    x, y = Decimal(a), Decimal(b)
    assert (ka < kb, ka == kb, ka > kb) == (x < y, x == y, x > y)
    assert (hash(ka) == hash(kb)) or x != y
