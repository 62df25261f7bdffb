"""Events to Publications: channels, seq, snapshots, references; and a client's round trip
over real recordings: the entries alone rebuild the book the venue checks describe."""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from relay.core.book import Book
from relay.producer import Publication
from relay.replay.checks import CHECKSUMS, Tally, Verifier, quote_matches
from relay.replay.events import BookDiff, Event, Reference, Snapshot, Trade
from relay.replay.recordings import aligned, recordings
from relay.replay.writer import ChannelCollision, Writer, symbol_of, with_checksums

from .conftest import market_path


def _feed(writer: Writer, events: Iterable[Event]) -> list[Publication]:
    offsets = ((0, event) for event in events)
    return [item for _, e, c in with_checksums(offsets) for item in writer.feed(e, c)]


def _data(item: Publication) -> Any:
    return orjson.loads(item.data)


def test_symbols_are_sanitized() -> None:
    assert symbol_of("kraken", "XBT/CHF") == "XBT-CHF"
    assert symbol_of("kraken", "XBT/CHF", venue_prefix=True) == "kraken_XBT-CHF"
    assert symbol_of("okx", "BTC-USD-210924-66000-C") == "BTC-USD-210924-66000-C"
    with pytest.raises(ValueError, match="no valid channel symbol"):
        symbol_of("v", "X" * 41)


def test_first_entry_is_the_snapshot_and_the_snapshot_hash_points_at_it() -> None:
    snap = Snapshot("kraken", "XBT/CHF", 1_500_000, (("10.0", "1"),), (("11.0", "2"),))
    [item] = _feed(Writer(), [snap])
    assert (item.channel, item.seq, item.ts) == ("book.XBT-CHF", 1, 1500)
    assert _data(item) == {
        "bids": [["10.0", "1"]],
        "asks": [["11.0", "2"]],
        "venue": {"name": "kraken", "snapshot": True},
    }
    assert item.snapshot is not None
    assert orjson.loads(item.snapshot) == {"bids": [["10.0", "1"]], "asks": [["11.0", "2"]]}


def test_snapshot_hash_is_refreshed_every_k_entries() -> None:
    events: list[Event] = [Snapshot("v", "X", 0, (("1", "1"),), ())]
    events += [BookDiff("v", "X", i, ((f"{i}", "1"),), (), {"seq": i}) for i in range(2, 8)]
    items = _feed(Writer(snapshot_every=3), events)
    assert [item.seq for item in items] == [1, 2, 3, 4, 5, 6, 7]
    assert [item.seq for item in items if item.snapshot is not None] == [1, 3, 6]
    assert orjson.loads(items[5].snapshot or b"") == {
        "bids": [[str(p), "1"] for p in (6, 5, 4, 3, 2, 1)],
        "asks": [],
    }
    assert _data(items[1])["venue"] == {"name": "v", "seq": 2}


def test_a_later_venue_snapshot_becomes_a_replacing_diff() -> None:
    first = Snapshot("v", "X", 0, (("2", "1"), ("1", "1")), (("3", "1"),))
    diff = BookDiff("v", "X", 1, (), (("4", "5"),))
    again = Snapshot("v", "X", 2, (("2", "7"),), (("5", "1"),))
    items = _feed(Writer(), [first, diff, again])
    assert _data(items[2]) == {
        "bids": [["1", "0"], ["2", "7"]],
        "asks": [["3", "0"], ["4", "0"], ["5", "1"]],
        "venue": {"name": "v", "snapshot": True},
    }
    client = Book()
    for item in items:
        client.apply(_data(item))
    assert client == Book.from_payload({"bids": [["2", "7"]], "asks": [["5", "1"]]})
    assert items[2].snapshot is not None


def test_references_ride_on_the_next_book_entry() -> None:
    top = Reference("v", "X", 5_000, "top", bid=("1", "2"), ask=("3", None), ids={"u": 9})
    positional = Reference("v", "X", 4_000, "top", bid=("1", "2"), ask=("3", None))
    events: list[Event] = [
        positional,  # before any book and not matched by update id: dropped
        top,  # matched by update id: it rides on the first entry
        Snapshot("v", "X", 6_000, (("1", "2"),), (("3", "4"),)),
        top,
        BookDiff("v", "X", 7_000, (("1", "0"),), ()),
        Reference("v", "X", 7_000, "checksum", checksum=42),
    ]
    writer = Writer()
    items = _feed(writer, events)
    assert writer.dropped_refs == 1
    assert _data(items[0])["venue"]["refs"] == [
        {"kind": "top", "ts": 5, "bid": ["1", "2"], "ask": ["3", None], "u": 9}
    ]
    assert _data(items[1])["venue"] == {
        "name": "v",
        "refs": [{"kind": "top", "ts": 5, "bid": ["1", "2"], "ask": ["3", None], "u": 9}],
        "checksum": 42,
    }


def test_references_after_the_last_entry_get_an_empty_entry_at_the_end() -> None:
    writer = Writer()
    _feed(writer, [Snapshot("v", "X", 0, (("1", "1"),), ())])
    assert _feed(writer, [Reference("v", "X", 9_000, "top", bid=("1", None))]) == []
    [item] = writer.finish()
    assert (item.channel, item.seq, item.ts) == ("book.X", 2, 9)
    assert _data(item) == {
        "bids": [],
        "asks": [],
        "venue": {"name": "v", "refs": [{"kind": "top", "ts": 9, "bid": ["1", None]}]},
    }
    assert writer.finish() == []


def test_a_checksum_goes_only_with_the_update_it_follows() -> None:
    events: list[Event] = [
        Snapshot("v", "X", 0, (("1", "1"),), ()),
        Snapshot("v", "Y", 0, (("1", "1"),), ()),
        Reference("v", "X", 0, "checksum", checksum=1),  # Y's entry came in between
    ]
    writer = Writer()
    items = _feed(writer, events)
    assert all("checksum" not in _data(item)["venue"] for item in items)
    assert writer.dropped_refs == 1


def test_trades_get_their_own_channel_and_an_id() -> None:
    events = [
        Trade("kraken", "A/B", 2_000, None, "1.5", "2", "buy", {"time": "1.0"}),
        Trade("okx", "C-D", 3_000, "77", "1.5", "2", "sell"),
    ]
    first, second = _feed(Writer(), events)
    assert (first.channel, first.seq, first.ts, first.snapshot) == ("trades.A-B", 1, 2, None)
    assert _data(first) == {
        "id": "1",
        "price": "1.5",
        "size": "2",
        "side": "buy",
        "venue": {"name": "kraken", "time": "1.0"},
    }
    assert _data(second)["id"] == "77"


def test_instruments_of_two_venues_on_one_channel_are_refused() -> None:
    events = [
        Trade("binance-spot", "BTCUSDT", 0, "1", "1", "1", "buy"),
        Trade("binance-usdm", "BTCUSDT", 0, "1", "1", "1", "buy"),
    ]
    with pytest.raises(ChannelCollision, match="venue prefixes"):
        _feed(Writer(), events)
    channels = {item.channel for item in _feed(Writer(venue_prefix=True), events)}
    assert channels == {"trades.binance-spot_BTCUSDT", "trades.binance-usdm_BTCUSDT"}


# -- a client rebuilding from the entries alone ----------------------------------------


@dataclass
class Client:
    """Applies a book channel's entries and checks what the venue keys carry."""

    book: Book = field(default_factory=Book)
    checksums: Tally = field(default_factory=Tally)
    tops: Tally = field(default_factory=Tally)
    snapshots: Tally = field(default_factory=Tally)
    # Binance: (u, bid, ask) after each entry and the bookTickers, matched at the end.
    by_u: list[tuple[int, Any, Any]] = field(default_factory=list)
    tickers: dict[int, dict[str, Any]] = field(default_factory=dict)

    def entry(self, item: Publication) -> None:
        data = _data(item)
        venue = data["venue"]
        for ref in venue.get("refs", []):
            if "u" in ref:
                self.tickers[ref["u"]] = ref
            else:  # described the book as it was before this entry
                self.tops.add(self._top_ok(self.book.best_bid(), self.book.best_ask(), ref), str)
        self.book.apply(data)
        if "checksum" in venue:
            ok = CHECKSUMS[venue["name"]](self.book) == venue["checksum"]
            self.checksums.add(ok, str)
        if "u" in venue and not venue.get("snapshot"):
            self.by_u.append((venue["u"], self.book.best_bid(), self.book.best_ask()))
        if item.snapshot is not None:
            self.snapshots.add(orjson.loads(item.snapshot) == self.book.to_payload(), str)

    @staticmethod
    def _top_ok(bid: Any, ask: Any, ref: dict[str, Any]) -> bool:
        def quote(side: str) -> tuple[str, str | None] | None:
            raw = ref.get(side)
            return None if raw is None else (raw[0], raw[1])

        return quote_matches(bid, quote("bid")) and quote_matches(ask, quote("ask"))

    def finish(self) -> None:
        ids = sorted(self.tickers)
        for u, bid, ask in self.by_u:
            i = bisect.bisect_right(ids, u) - 1
            if i >= 0:
                self.tops.add(self._top_ok(bid, ask, self.tickers[ids[i]]), str)


def _round_trip(items: Iterator[Publication]) -> dict[str, Client]:
    clients: dict[str, Client] = {}
    for item in items:
        if item.channel.startswith("book."):
            clients.setdefault(item.channel, Client()).entry(item)
    for client in clients.values():
        client.finish()
    return clients


def _total(clients: dict[str, Client], name: str) -> tuple[int, int]:
    tallies = [getattr(client, name) for client in clients.values()]
    return sum(t.passed for t in tallies), sum(t.made for t in tallies)


def _publications(*parts: str) -> tuple[list[Publication], Verifier]:
    [recording] = recordings([market_path(*parts)])
    events = list(recording.events())
    writer = Writer(snapshot_every=50)
    items = [
        item
        for _, event, checksum in with_checksums(aligned([iter(events)]))
        for item in writer.feed(event, checksum)
    ]
    return items + writer.finish(), Verifier().feed_all(events)


@pytest.mark.parametrize(
    ("directory", "checksums", "tops"),
    [
        ("kraken_cryptofeed", (4269, 4269), (0, 0)),
        ("okx_cryptofeed_2021-07-22", (1504, 1504), (0, 0)),
        ("coinbase_cryptofeed", (0, 0), (97, 97)),
        ("krakenfutures_cryptofeed", (0, 0), (107, 107)),
    ],
)
def test_clients_reproduce_the_venue_checks_from_the_entries(
    directory: str, checksums: tuple[int, int], tops: tuple[int, int]
) -> None:
    items, _ = _publications(directory)
    clients = _round_trip(iter(items))
    assert _total(clients, "checksums") == checksums
    assert _total(clients, "tops") == tops
    passed, made = _total(clients, "snapshots")
    assert passed == made > 0
    for channel in {item.channel for item in items}:
        seqs = [item.seq for item in items if item.channel == channel]
        assert seqs == list(range(1, len(seqs) + 1)), channel


def test_binance_clients_match_book_tickers_by_update_id() -> None:
    # One day of spot (0808) keeps this quick; the events' own tally is the reference.
    items, verifier = _publications("binance_hftbacktest", "spot_btcusdt_20240808.gz")
    clients = _round_trip(iter(items))
    assert _total(clients, "tops") == (verifier.tops.passed, verifier.tops.made)
    assert verifier.tops.made > 3000
    assert verifier.tops.passed == verifier.tops.made  # both misses are on 0809
