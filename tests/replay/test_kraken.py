"""Kraken spot v1 book-1000: every checksum, and the truncation to the subscribed depth."""

from __future__ import annotations

from pathlib import Path

from relay.core.book import Book
from relay.replay.checks import kraken_checksum
from relay.replay.events import BookDiff, Reference, Snapshot, Trade, payload
from relay.replay.venues import kraken

from .conftest import verified

DIR = "kraken_cryptofeed"


def test_every_checksum_matches() -> None:
    verifier = verified(DIR, kraken.VENUE)
    assert (verifier.checksums.passed, verifier.checksums.made) == (4269, 4269)
    assert verifier.counts["Snapshot"] == 10
    assert verifier.counts["BookDiff"] == 4269
    assert verifier.crossed.passed == verifier.crossed.made == 4269 + 10


def test_trades_have_no_ids_and_a_taker_side() -> None:
    verifier = verified(DIR, kraken.VENUE)
    # 8 trade messages (the manifest's "8 trades"); two of them hold two trades each.
    assert verifier.counts["Trade"] == 10
    assert verifier.trade_ids.made == 0


def _write(path: Path, *messages: str) -> Path:
    lines = ["wss://ws.kraken.com <-> 1700000000.0"]
    lines += [f"1700000000.{i:06d}: {message}" for i, message in enumerate(messages, 1)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_levels_pushed_below_the_depth_are_removed_explicitly(tmp_path: Path) -> None:
    # A synthetic book-3: a better ask pushes the worst one out, which Kraken drops
    # without a message; the diff must say so for the relay's book to equal Kraken's.
    path = _write(
        tmp_path / "KRAKEN.ws.synthetic",
        '[7,{"as":[["1.10","1.0","1"],["1.20","2.0","1"],["1.30","3.0","1"]],'
        '"bs":[["1.00","1.0","1"]]},"book-3","AAA/BBB"]',
        '[7,{"a":[["1.05","4.0","2"]],"c":"0"},"book-3","AAA/BBB"]',
        '[7,{"a":[["1.40","5.0","2"]],"c":"0"},"book-3","AAA/BBB"]',
    )
    events = list(kraken.events([path]))
    assert isinstance(events[0], Snapshot)
    first, second = events[1], events[3]
    assert isinstance(first, BookDiff)
    assert isinstance(second, BookDiff)
    assert first.asks == (("1.05", "4.0"), ("1.30", "0"))
    # An insert below the depth is dropped at once: set, then removed.
    assert second.asks == (("1.40", "5.0"), ("1.40", "0"))
    book = Book.from_payload(payload(events[0]))
    book.apply(payload(first))
    book.apply(payload(second))
    assert book.ask_levels() == [("1.05", "4.0"), ("1.10", "1.0"), ("1.20", "2.0")]
    assert isinstance(events[2], Reference)
    assert events[2].kind == "checksum"


def test_checksum_reference_follows_its_update(tmp_path: Path) -> None:
    book = Book.from_payload({"bids": [["0.5", "2"]], "asks": [["0.6", "3"]]})
    checksum = kraken_checksum(book)
    path = _write(
        tmp_path / "KRAKEN.ws.synthetic",
        '[7,{"as":[["0.6","3","1"]],"bs":[]},"book-10","A/B"]',
        f'[7,{{"b":[["0.5","2","2"]],"c":"{checksum}"}},"book-10","A/B"]',
        '[8,[["0.55","1.5","1700000001.5","b","l",""]],"trade","A/B"]',
    )
    events = list(kraken.events([path]))
    assert [type(e) for e in events] == [Snapshot, BookDiff, Reference, Trade]
    ref = events[2]
    assert isinstance(ref, Reference)
    assert ref.checksum == checksum
    trade = events[3]
    assert isinstance(trade, Trade)
    assert (trade.id, trade.price, trade.size, trade.side) == (None, "0.55", "1.5", "buy")
    assert trade.recv_ns == 1700000000_000003000
