"""Prove the books right: real exchange recordings through redis-server, a running relay and
the SDK, checked against what the exchange said (harness.py says how).

The expected numbers are the manifest's (/work/shared/data/market/MANIFEST.md), the same
that tests/replay reproduces without Redis; each test asserts how many checks were made,
not only that none failed, so that nothing passes by checking nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from .harness import Outcome, recording, replay_through_relay

pytestmark = pytest.mark.redis

Count = tuple[int, int]  # (passed, made)


@dataclass(frozen=True)
class Expected:
    book_entries: int  # entries over every book channel (seq 1 is the venue snapshot)
    trade_entries: int
    book_channels: int
    trade_channels: int
    checksums: Count = (0, 0)  # the venue's checksum after an update (Kraken, OKX)
    tops: Count = (0, 0)  # the venue's best bid/ask (bookTicker, ticker, ticker_lite)
    update_ids: Count = (0, 0)  # continuity of the venue's book update ids
    trade_ids: Count = (0, 0)  # numeric trade ids, each the previous + 1
    # Binance diffs (their u) that no bookTicker reaching the client describes.
    unmatched_diffs: tuple[int, ...] = ()


@dataclass(frozen=True)
class Case:
    directory: str
    files: tuple[str, ...]  # () for the whole directory
    expected: Expected

    def paths(self) -> list[Path]:
        if not self.files:
            return [recording(self.directory)]
        return [recording(self.directory, name) for name in self.files]


BINANCE = "binance_hftbacktest"

CASES = {
    # 10 pairs; 4269 updates, each with Kraken's CRC32 of the top 10 (manifest: 4269/4269).
    "kraken": Case(
        "kraken_cryptofeed",
        (),
        Expected(4279, 10, 10, 2, checksums=(4269, 4269)),
    ),
    # 10 instruments; 10 snapshots and 1494 updates, each with OKX's checksum (1504/1504).
    "okx": Case(
        "okx_cryptofeed_2021-07-22",
        (),
        Expected(1504, 36, 10, 9, checksums=(1504, 1504), trade_ids=(27, 27)),
    ),
    # 97 tickers after each product's first (stale) one; 97 contiguous match ids.
    "coinbase": Case(
        "coinbase_cryptofeed",
        (),
        Expected(9729, 107, 10, 10, tops=(97, 97), trade_ids=(97, 97)),
    ),
    # 107 ticker_lite tops; 7014 book deltas, each seq the previous + 1. The last tickers
    # ride on one empty entry at the end (7025 = 10 + 7014 + 1).
    "krakenfutures": Case(
        "krakenfutures_cryptofeed",
        (),
        Expected(7025, 1003, 10, 10, tops=(107, 107), update_ids=(7014, 7014)),
    ),
    # 6492 diffs over 0808 and 0809 (one stream); the top agrees with bookTicker at 6490
    # of them (the 2 misses are checked below).
    "binance-spot": Case(
        BINANCE,
        ("spot_btcusdt_20240808.gz", "spot_btcusdt_20240809.gz"),
        Expected(
            6493,
            19904,
            1,
            1,
            tops=(6490, 6492),
            update_ids=(6492, 6492),
            trade_ids=(19903, 19903),
        ),
    ),
    "binance-usdm": Case(
        BINANCE,
        ("usdm_btcusdt_20240808.gz",),
        Expected(
            6546,
            21313,
            1,
            1,
            tops=(6545, 6545),
            update_ids=(6545, 6545),
            trade_ids=(21312, 21312),
        ),
    ),
    # All of the manifest's 44770 tops: the bookTicker that describes the first 3 diffs
    # after the snapshot (u'=1007198634782) was received before the REST snapshot; the
    # writer keeps such update-id references and puts them on the first book entry.
    "binance-coinm": Case(
        BINANCE,
        ("cm_btcusd_perp_20240808.gz", "cm_btcusd_perp_20240809.gz"),
        Expected(
            44771,
            5235,
            1,
            1,
            tops=(44770, 44770),
            update_ids=(44770, 44770),
            trade_ids=(5234, 5234),
        ),
    ),
}

# The manifest's two spot diffs after which no bookTicker described the book.
SPOT_MISSES = ["diff u=50093478174", "diff u=50093480542"]


def check(outcome: Outcome, expected: Expected) -> None:
    checks = outcome.checks
    why = outcome.summary()
    # Everything the replay wrote reached the client, as updates after an empty seq 0.
    books = [name for name in outcome.last_seqs if name.startswith("book.")]
    trades = [name for name in outcome.last_seqs if name.startswith("trades.")]
    assert (len(books), len(trades)) == (expected.book_channels, expected.trade_channels), why
    assert outcome.entries("book") == expected.book_entries, why
    assert outcome.entries("trades") == expected.trade_entries, why
    assert checks.book_updates == expected.book_entries, why
    assert checks.trade_updates == expected.trade_entries, why
    assert checks.problems == [], why
    # What the exchange said.
    assert (checks.checksums.passed, checks.checksums.made) == expected.checksums, why
    assert (checks.tops.passed, checks.tops.made) == expected.tops, why
    assert (checks.update_ids.passed, checks.update_ids.made) == expected.update_ids, why
    assert (checks.trade_ids.passed, checks.trade_ids.made) == expected.trade_ids, why
    assert checks.unchecked_refs == 0, why
    assert tuple(checks.unmatched_diffs) == expected.unmatched_diffs, why
    # The relay's checksum on every book frame (seq 0 snapshot, then every update), as the
    # client computes it and as the SDK verified it.
    frames = expected.book_entries + expected.book_channels
    relay_checksums = checks.relay_checksums
    assert (relay_checksums.passed, relay_checksums.made) == (frames, frames), why
    assert outcome.total("checksums_verified") == frames, why
    # No recovery was ever needed.
    for counter in ("checksum_failures", "gaps", "duplicates", "malformed", "resubscribes"):
        assert outcome.total(counter) == 0, f"{counter}: {why}"
    for counter in ("reconnects", "resumes_replayed", "resumes_snapshot", "errors"):
        assert outcome.total(counter) == 0, f"{counter}: {why}"
    assert outcome.total("snapshots") == len(outcome.last_seqs), why
    assert outcome.total("updates") == expected.book_entries + expected.trade_entries, why


@pytest.mark.parametrize("name", list(CASES))
async def test_client_books_agree_with_the_exchange(redis_url: str, name: str) -> None:
    case = CASES[name]
    outcome = await replay_through_relay(redis_url, case.paths())
    check(outcome, case.expected)
    if name == "binance-spot":
        misses = [failure.split(": ")[0] for failure in outcome.checks.tops.failures]
        assert misses == [f"book.BTCUSDT {miss}" for miss in SPOT_MISSES], outcome.summary()
