"""BitMEX orderBookL2 (id-keyed rows): every row id known, book never crossed."""

from __future__ import annotations

from relay.replay.venues import bitmex

from .conftest import verified

DIR = "bitmex_cryptofeed"


def test_every_row_refers_to_a_known_id_and_the_book_is_never_crossed() -> None:
    # An update or delete of an unknown id raises, so getting here means 0 misses.
    verifier = verified(DIR, bitmex.VENUE)
    assert verifier.counts["Snapshot"] == 10
    assert verifier.counts["BookDiff"] == 1090 + 445 + 434  # one symbol per message here
    assert verifier.crossed.passed == verifier.crossed.made == 10 + 1969
