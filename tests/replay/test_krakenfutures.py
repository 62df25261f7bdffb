"""Kraken Futures: ticker_lite agrees with the book, book seq continuous."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.replay.errors import ReplayFormatError
from relay.replay.events import BookDiff, Snapshot
from relay.replay.venues import krakenfutures

from .conftest import verified

DIR = "krakenfutures_cryptofeed"


def test_every_ticker_agrees_with_the_book() -> None:
    verifier = verified(DIR, krakenfutures.VENUE)
    assert (verifier.tops.passed, verifier.tops.made) == (107, 107)


def test_book_seq_is_continuous() -> None:
    verifier = verified(DIR, krakenfutures.VENUE)
    assert verifier.counts["Snapshot"] == 10
    assert (verifier.update_ids.passed, verifier.update_ids.made) == (7014, 7014)
    assert verifier.crossed.passed == verifier.crossed.made


def test_trades_include_the_snapshot_history() -> None:
    verifier = verified(DIR, krakenfutures.VENUE)
    # 10 trade_snapshots of 100 recent trades each, and 3 live trades.
    assert verifier.counts["Trade"] == 10 * 100 + 3


def _write(path: Path, *messages: str) -> Path:
    lines = ["wss://futures.kraken.com/ws/v1 <-> 1700000000.0"]
    lines += [f"1700000000.{i}: {message}" for i, message in enumerate(messages, 1)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_numbers_keep_their_digits_and_a_seq_gap_is_an_error(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "KRAKEN_FUTURES.ws.synthetic",
        '{"feed":"book_snapshot","product_id":"PI_X","seq":5,"bids":[{"price":1.50,"qty":10.0}],'
        '"asks":[{"price":1.6,"qty":1e2}]}',
        '{"feed":"book","product_id":"PI_X","side":"buy","seq":6,"price":1.55,"qty":3.0}',
        '{"feed":"book","product_id":"PI_X","side":"sell","seq":8,"price":1.6,"qty":0.0}',
    )
    events = krakenfutures.events([path])
    snapshot = next(events)
    assert isinstance(snapshot, Snapshot)
    assert snapshot.bids == (("1.50", "10.0"),)
    assert snapshot.asks == (("1.6", "100"),)  # the contract wants plain decimals
    diff = next(events)
    assert isinstance(diff, BookDiff)
    assert diff.bids == (("1.55", "3.0"),)
    with pytest.raises(ReplayFormatError, match=r"synthetic:4: .*seq gap in PI_X: 8 after 6"):
        next(events)
