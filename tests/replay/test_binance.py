"""Binance spot, USD-M and COIN-M: the manifest's checks, reproduced from the events."""

from __future__ import annotations

import itertools

from relay.replay.events import BookDiff, Reference, Snapshot, Trade
from relay.replay.lines import head
from relay.replay.recordings import recordings
from relay.replay.venues import binance, detect

from .conftest import market_path, verified

DIR = "binance_hftbacktest"


def test_spot_top_of_book_agrees_with_book_ticker_except_the_two_known_misses() -> None:
    spot = verified(DIR, binance.SPOT)
    assert (spot.tops.passed, spot.tops.made) == (6490, 6492)
    # Both misses are diffs after which no bookTicker described the book: the manifest's
    # "bookTicker messages that were never delivered".
    assert [failure.split(":")[0] for failure in spot.tops.failures] == [
        "('binance-spot', 'BTCUSDT') diff u=50093478174",
        "('binance-spot', 'BTCUSDT') diff u=50093480542",
    ]


def test_futures_top_of_book_agrees_with_every_book_ticker() -> None:
    usdm, coinm = verified(DIR, binance.USDM), verified(DIR, binance.COINM)
    assert (usdm.tops.passed, usdm.tops.made) == (6545, 6545)
    assert (coinm.tops.passed, coinm.tops.made) == (44770, 44770)


def test_update_ids_are_continuous_across_both_days() -> None:
    # One diff is one check; the spot and COIN-M streams go on across 0808 -> 0809 with
    # no new snapshot, so the counts span both files.
    for venue, diffs in ((binance.SPOT, 6492), (binance.USDM, 6545), (binance.COINM, 44770)):
        verifier = verified(DIR, venue)
        assert verifier.counts["Snapshot"] == 1, venue
        assert verifier.counts["BookDiff"] == diffs, venue
        assert (verifier.update_ids.passed, verifier.update_ids.made) == (diffs, diffs), venue


def test_trade_ids_are_contiguous() -> None:
    for venue, first, last in (
        (binance.SPOT, 3735683259, 3735703162),
        (binance.USDM, 5266583935, 5266605247),
        (binance.COINM, 849714402, 849719636),
    ):
        verifier = verified(DIR, venue)
        count = last - first + 1
        assert verifier.counts["Trade"] == count, venue
        assert (verifier.trade_ids.passed, verifier.trade_ids.made) == (count - 1, count - 1)
        state = next(iter(verifier.states.values()))
        assert state.last_trade_id == last, venue


def test_book_is_never_crossed() -> None:
    for venue in binance.VENUES:
        crossed = verified(DIR, venue).crossed
        assert crossed.made > 0
        assert crossed.passed == crossed.made, crossed.failures


def test_book_tickers_are_all_references() -> None:
    # Every bookTicker line of the manifest's table becomes a top Reference.
    assert verified(DIR, binance.SPOT).counts["Reference"] == 28040 + 45134
    assert verified(DIR, binance.USDM).counts["Reference"] == 66089
    assert verified(DIR, binance.COINM).counts["Reference"] == 19136 + 29219


def test_snapshot_is_the_rest_snapshot_with_the_buffered_diffs_applied() -> None:
    expected = {
        binance.SPOT: 50093239218,
        binance.USDM: 5123107852948,
        binance.COINM: 1007198635033,
    }
    for recording in recordings([market_path(DIR)]):
        events = recording.events()
        head = list(itertools.islice(events, 200))
        snapshot = next(e for e in head if isinstance(e, Snapshot))
        assert snapshot.ids["lastUpdateId"] == expected[recording.venue]
        # The diffs folded into it are the ones that cover lastUpdateId: the first diff
        # published after it continues from the last one folded in.
        first = next(e for e in head if isinstance(e, BookDiff))
        if recording.venue == binance.SPOT:
            assert first.ids["U"] == int(snapshot.ids["u"]) + 1
        else:
            assert first.ids["pu"] == snapshot.ids["u"]
        assert len(snapshot.bids) > 990
        assert len(snapshot.asks) > 990
        # Events come in recorded order.
        times = [e.recv_ns for e in head]
        assert times == sorted(times)
        assert any(isinstance(e, Trade) for e in head)
        assert any(isinstance(e, Reference) for e in head)


def test_markets_are_detected_from_content_and_names() -> None:
    for name, venue in (
        ("spot_btcusdt_20240808.gz", binance.SPOT),
        ("spot_btcusdt_20240809.gz", binance.SPOT),
        ("usdm_btcusdt_20240808.gz", binance.USDM),
        ("cm_btcusd_perp_20240808.gz", binance.COINM),
        ("cm_btcusd_perp_20240809.gz", binance.COINM),
    ):
        path = market_path(DIR, name)
        assert binance.sniff(head(path)) == venue, name  # the content alone
        assert detect(path) == venue, name
