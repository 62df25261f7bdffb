"""OKX books-l2-tbt: every checksum (signed CRC32 of the top 25)."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.replay.errors import ReplayFormatError
from relay.replay.events import Reference, Snapshot
from relay.replay.venues import okx

from .conftest import verified

DIR = "okx_cryptofeed_2021-07-22"


def test_every_checksum_matches() -> None:
    verifier = verified(DIR, okx.VENUE)
    assert (verifier.checksums.passed, verifier.checksums.made) == (1504, 1504)
    assert verifier.counts["Snapshot"] == 10
    assert verifier.counts["BookDiff"] == 1494
    assert verifier.crossed.passed == verifier.crossed.made == 1504


def test_trades_are_parsed() -> None:
    verifier = verified(DIR, okx.VENUE)
    assert verifier.counts["Trade"] == 36  # one trade per trade message here


def test_update_before_snapshot_and_unknown_channel(tmp_path: Path) -> None:
    path = tmp_path / "OKEX.ws.synthetic"
    path.write_text(
        "wss://ws.okx.com:8443/ws/v5/public <-> 1700000000.0\n"
        '1700000000.1: {"arg":{"channel":"books","instId":"A-B"},"action":"snapshot",'
        '"data":[{"asks":[["2","1","0","1"]],"bids":[["1","1","0","1"]],"ts":"5",'
        '"checksum":-1}]}\n'
        '1700000000.2: {"arg":{"channel":"candle1m","instId":"A-B"},"data":[]}\n'
    )
    events = okx.events([path])
    assert isinstance(next(events), Snapshot)
    ref = next(events)
    assert isinstance(ref, Reference)
    assert ref.checksum == -1
    with pytest.raises(ReplayFormatError, match=r"OKEX\.ws\.synthetic:3: .*candle1m"):
        next(events)
