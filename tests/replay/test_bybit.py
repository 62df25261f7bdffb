"""Bybit orderbook.500: u continuous, 500 levels a side throughout, never crossed."""

from __future__ import annotations

from relay.replay.venues import bybit

from .conftest import market_path, verified

DIR = "bybit_nautilus"


def test_update_ids_are_continuous() -> None:
    verifier = verified(DIR, bybit.VENUE)
    assert verifier.counts["Snapshot"] == 1
    assert (verifier.update_ids.passed, verifier.update_ids.made) == (49, 49)


def test_book_keeps_500_levels_a_side_and_is_never_crossed() -> None:
    verifier = verified(DIR, bybit.VENUE)
    assert verifier.depth(bybit.VENUE, "XRPUSDT") == ((500, 500), (500, 500))
    assert verifier.crossed.passed == verifier.crossed.made == 50


def test_the_zip_next_to_the_data_file_is_not_replayed_twice() -> None:
    verifier = verified(DIR, bybit.VENUE)
    assert verifier.counts["BookDiff"] == 49


def test_a_zip_named_on_the_command_line_is_read_like_its_content() -> None:
    data = list(bybit.events([market_path(DIR, "2024-12-01_XRPUSDT_ob500.data")]))
    zipped = list(bybit.events([market_path(DIR, "xrpusdt-ob500.data.zip")]))
    assert zipped == data
