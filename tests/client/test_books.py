"""One channel's state machine, fed hand-made frames: what it applies, hands out and refuses."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from client.fakes import FakeRelay, snapshot_frame, update_frame
from relay.client import (
    BookSnapshot,
    BookUpdate,
    ChannelState,
    ChannelStatus,
    ResyncReason,
    StatusChanged,
    Trade,
    TradesSnapshot,
    TradeUpdate,
)
from relay.core.book import Book
from relay.core.channel import Kind
from relay.core.checksum import book_checksum

BOOK = "book.X"
TRADES = "trades.X"
WORKED = {
    "bids": [["100.5", "1.25"], ["100.0", "3"], ["99.5", "0.010"]],
    "asks": [["101.0", "2"], ["101.5", "0.5"]],
}


def live_book(relay: FakeRelay, **options: Any) -> ChannelState:
    state = ChannelState(BOOK, Kind.BOOK, **options)
    step = state.snapshot(relay.snapshot(BOOK), 0)
    assert step.resync is None
    return state


def test_snapshot_then_updates_in_order_give_the_producers_book() -> None:
    relay = FakeRelay([BOOK])
    state = ChannelState(BOOK, Kind.BOOK)
    step = state.snapshot(relay.snapshot(BOOK), received_us=7)
    assert [type(e) for e in step.events] == [StatusChanged, BookSnapshot]
    status, snapshot = step.events
    assert status == StatusChanged(BOOK, ChannelStatus.LIVE, ChannelStatus.SUBSCRIBING, "snapshot")
    assert isinstance(snapshot, BookSnapshot)
    assert (snapshot.epoch, snapshot.seq, snapshot.received_us) == ("e1", 5, 7)
    book = snapshot.book
    for _ in range(20):
        frame = relay.step(BOOK)
        step = state.update(frame, received_us=frame["ts"] + 250)
        assert step.resync is None
        [event] = step.events
        assert isinstance(event, BookUpdate)
        assert event.seq == frame["seq"]
        assert event.diff == frame["data"]
        assert event.latency_us == 250
        assert event.book is book  # updated in place
        assert book.to_book() == relay.channels[BOOK].books[event.seq]
        assert book.seq == event.seq
    assert state.position == ("e1", 25)
    counters = state.counters
    assert (counters.snapshots, counters.updates, counters.checksums_verified) == (1, 20, 21)
    assert (counters.gaps, counters.duplicates, counters.checksum_failures) == (0, 0, 0)


def test_a_gap_is_not_applied_and_asks_for_a_resync() -> None:
    relay = FakeRelay([BOOK])
    state = live_book(relay)
    state.update(relay.step(BOOK), 0)
    relay.step(BOOK)  # lost on the way
    step = state.update(relay.step(BOOK), 0)
    assert step.events == []
    assert step.resync is ResyncReason.GAP
    assert state.counters.gaps == 1
    assert state.counters.updates == 1


def test_a_duplicate_is_ignored_and_the_next_update_applies() -> None:
    relay = FakeRelay([BOOK])
    state = live_book(relay)
    first = relay.step(BOOK)
    state.update(first, 0)
    step = state.update(first, 0)
    assert step.events == []
    assert step.resync is None
    assert state.counters.duplicates == 1
    step = state.update(relay.step(BOOK), 0)
    assert [e.seq for e in step.events if isinstance(e, BookUpdate)] == [7]
    assert state.book is not None
    assert state.book.to_book() == relay.channels[BOOK].book


def test_an_update_whose_checksum_does_not_match_is_not_handed_out() -> None:
    relay = FakeRelay([BOOK])
    state = live_book(relay)
    frame = relay.step(BOOK)
    step = state.update({**frame, "checksum": frame["checksum"] ^ 1}, 0)
    assert step.events == []
    assert step.resync is ResyncReason.CHECKSUM
    assert state.counters.checksum_failures == 1


def test_a_local_book_that_went_wrong_is_caught_by_the_next_checksum() -> None:
    relay = FakeRelay([BOOK])
    state = live_book(relay)
    assert state.book is not None
    state.book._book.apply({"bids": [["100.01", "5"]]})  # a level the producer never had
    step = state.update(relay.step(BOOK), 0)
    assert step.resync is ResyncReason.CHECKSUM


def test_a_snapshot_whose_checksum_does_not_match_is_refused() -> None:
    relay = FakeRelay([BOOK])
    state = ChannelState(BOOK, Kind.BOOK)
    frame = relay.snapshot(BOOK)
    step = state.snapshot({**frame, "checksum": frame["checksum"] + 1}, 0)
    assert step.events == []
    assert step.resync is ResyncReason.CHECKSUM
    assert state.status is ChannelStatus.SUBSCRIBING
    assert state.book is None


def test_checksums_are_not_verified_at_depth_zero_or_when_the_relay_sends_none() -> None:
    relay = FakeRelay([BOOK])
    unverified = live_book(relay, checksum_depth=0)
    frame = relay.step(BOOK)
    assert unverified.update({**frame, "checksum": 1}, 0).resync is None
    assert unverified.counters.checksums_verified == 0

    quiet = FakeRelay([BOOK], checksum_depth=0)
    state = live_book(quiet)
    assert state.update(quiet.step(BOOK), 0).resync is None
    assert state.counters.checksums_verified == 0


def test_the_checksum_depth_must_be_the_relays() -> None:
    relay = FakeRelay([BOOK], checksum_depth=5)
    state = ChannelState(BOOK, Kind.BOOK, checksum_depth=5)
    assert state.snapshot(relay.snapshot(BOOK), 0).resync is None
    assert state.update(relay.step(BOOK), 0).resync is None
    other = ChannelState(BOOK, Kind.BOOK, checksum_depth=10)
    assert other.snapshot(relay.snapshot(BOOK), 0).resync is ResyncReason.CHECKSUM


def test_a_snapshot_replaces_the_state_whatever_its_seq_or_epoch() -> None:
    relay = FakeRelay([BOOK])
    state = live_book(relay)
    for _ in range(5):
        state.update(relay.step(BOOK), 0)
    old = state.book
    new_book = Book.from_payload(WORKED)
    frame = snapshot_frame(BOOK, 2, WORKED, epoch="e2", checksum=book_checksum(new_book))
    step = state.snapshot(frame, 0)
    [event] = step.events  # already live: no status change
    assert isinstance(event, BookSnapshot)
    assert event.book is not old
    assert event.book.to_book() == new_book
    assert state.position == ("e2", 2)
    diff = {"bids": [["100.5", "0"]], "asks": []}
    new_book.apply(diff)
    step = state.update(update_frame(BOOK, 3, diff, checksum=book_checksum(new_book)), 0)
    assert [e.seq for e in step.events if isinstance(e, BookUpdate)] == [3]
    assert event.book.best_bid() == ("100.0", "3")


def test_an_update_with_no_snapshot_to_apply_it_to_asks_for_one() -> None:
    state = ChannelState(BOOK, Kind.BOOK)
    step = state.update(update_frame(BOOK, 1, {"bids": [], "asks": []}), 0)
    assert step.resync is ResyncReason.NO_SNAPSHOT
    assert step.events == []


@pytest.mark.parametrize(
    "change",
    [
        {"data": {"bids": [["1e3", "1"]]}},  # not a plain decimal
        {"data": {"bids": [["100", "-1"]]}},
        {"data": ["not", "an", "object"]},
        {"seq": "7"},
        {"ts": None},
        {"checksum": "123"},
    ],
)
def test_an_update_that_cannot_be_applied_asks_for_a_resync(change: dict[str, Any]) -> None:
    relay = FakeRelay([BOOK])
    state = live_book(relay)
    step = state.update({**relay.step(BOOK), **change}, 0)
    assert step.events == []
    assert step.resync is ResyncReason.MALFORMED
    assert state.counters.malformed == 1


def test_a_malformed_snapshot_is_refused() -> None:
    state = ChannelState(BOOK, Kind.BOOK)
    step = state.snapshot(snapshot_frame(BOOK, 1, {"bids": [["x", "1"]], "asks": []}), 0)
    assert step.resync is ResyncReason.MALFORMED
    assert state.book is None


def test_trades_keep_the_last_n_and_follow_seq_like_books() -> None:
    relay = FakeRelay([TRADES], trades_kept=50)
    for _ in range(5):
        relay.step(TRADES)
    state = ChannelState(TRADES, Kind.TRADES, trades_kept=3)
    step = state.snapshot(relay.snapshot(TRADES), 0)
    _, snapshot = step.events
    assert isinstance(snapshot, TradesSnapshot)
    assert [t.id for t in snapshot.trades] == ["6", "7", "8", "9", "10"]  # all the relay sent
    assert [t.id for t in state.trades] == ["8", "9", "10"]  # the last 3 are kept
    step = state.update(relay.step(TRADES), 0)
    [event] = step.events
    assert isinstance(event, TradeUpdate)
    assert event.trade == Trade("11", "100.5", "0.1", "buy", {})
    assert [t.id for t in state.trades] == ["9", "10", "11"]
    again = relay.channels[TRADES].history[-1][1]
    assert state.update(again, 0).events == []  # duplicate
    relay.step(TRADES)
    assert state.update(relay.step(TRADES), 0).resync is ResyncReason.GAP
    counters = state.counters
    assert (counters.updates, counters.duplicates, counters.gaps) == (1, 1, 1)
    assert counters.checksums_verified == 0


def test_trades_keep_every_key_the_producer_wrote() -> None:
    state = ChannelState(TRADES, Kind.TRADES)
    state.snapshot(snapshot_frame(TRADES, 0, {"trades": []}), 0)
    trade = {"id": "1", "price": "2.5", "size": "3", "side": "sell", "venue": {"n": 1}}
    [event] = state.update(update_frame(TRADES, 1, trade), 0).events
    assert isinstance(event, TradeUpdate)
    assert event.trade.data == trade
    assert (event.trade.price, event.trade.side) == ("2.5", "sell")


def test_an_empty_trades_snapshot_is_a_state() -> None:
    state = ChannelState(TRADES, Kind.TRADES)
    step = state.snapshot(snapshot_frame(TRADES, 0, {"trades": []}), 0)
    assert state.status is ChannelStatus.LIVE
    assert state.position == ("e1", 0)
    assert isinstance(step.events[-1], TradesSnapshot)
    bad = snapshot_frame(TRADES, 0, {"trades": [1, 2]})
    assert ChannelState(TRADES, Kind.TRADES).snapshot(bad, 0).resync is ResyncReason.MALFORMED


def test_the_local_book_reads_like_the_protocol_says() -> None:
    state = ChannelState(BOOK, Kind.BOOK)
    state.snapshot(snapshot_frame(BOOK, 1, WORKED, checksum=1158620720), 0)
    book = state.book
    assert book is not None
    assert book.checksum() == 1158620720  # docs/protocol.md's worked example
    assert book.bids(2) == [("100.5", "1.25"), ("100.0", "3")]
    assert book.asks() == [("101.0", "2"), ("101.5", "0.5")]
    assert (book.best_bid(), book.best_ask()) == (("100.5", "1.25"), ("101.0", "2"))
    assert book.spread() == Decimal("0.5")
    assert book.mid() == Decimal("100.75")
    assert (book.bid_count, book.ask_count) == (3, 2)
    assert book.to_payload() == WORKED
