"""``replay``: everything published in order, paced by the recorded times, and what the
relay's own channel logic makes of the streams."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import orjson
import pytest

from relay.core.channel import Channel, Kind
from relay.producer import MemoryPublisher, Publication
from relay.replay.checks import kraken_checksum
from relay.replay.errors import ReplayFormatError
from relay.replay.writer import Progress, replay
from relay.source.base import SourceUnavailable, meta_key, snapshot_key, stream_key
from relay.source.memory import MemoryStore

from .conftest import market_path


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)  # let the publish in flight run, as a real sleep would
        self.sleeps.append(seconds)
        self.now += seconds


class Recorder:
    """A Publisher that notes when (on the fake clock) each batch went out."""

    def __init__(self, time: FakeTime, failures: int = 0) -> None:
        self.time = time
        self.failures = failures
        self.resets: list[tuple[list[str], str]] = []
        self.batches: list[tuple[float, list[Publication]]] = []

    async def reset(self, channels: Sequence[str], epoch: str) -> None:
        self.resets.append((list(channels), epoch))

    async def publish(self, items: Sequence[Publication]) -> None:
        if self.failures:
            # The connection dies after the server wrote the first entry of the pipeline.
            self.failures -= 1
            self.batches.append((self.time.now, list(items[:1])))
            raise SourceUnavailable("redis down")
        self.batches.append((self.time.now, list(items)))

    async def last_seqs(self, channels: Sequence[str]) -> dict[str, int]:
        written = dict.fromkeys(channels, 0)
        for _, items in self.batches:
            for item in items:
                if item.channel in written:
                    written[item.channel] = max(written[item.channel], item.seq)
        return written

    async def close(self) -> None:
        return None


def _bybit(path: Path, times_ms: Sequence[int], symbol: str = "XYZ") -> Path:
    line = (
        '{{"topic":"orderbook.50.{s}","type":"{kind}","ts":{ts},"cts":{ts},'
        '"data":{{"s":"{s}","b":[["1.{u}","1"]],"a":[["2","{u}"]],"u":{u},"seq":{u}}}}}'
    )
    kinds = ["snapshot"] + ["delta"] * (len(times_ms) - 1)
    path.write_text(
        "".join(
            line.format(s=symbol, kind=kind, ts=ts, u=u) + "\n"
            for u, (kind, ts) in enumerate(zip(kinds, times_ms, strict=True), 1)
        )
    )
    return path


async def test_recorded_pace_scaled_by_speed(tmp_path: Path) -> None:
    path = _bybit(
        tmp_path / "a_ob50.data", [1_700_000_000_000, 1_700_000_001_000, 1_700_000_003_000]
    )
    time = FakeTime()
    publisher = Recorder(time)
    stats = await replay([path], publisher, 2.0, clock=time.clock, sleep=time.sleep)
    assert sum(time.sleeps) == pytest.approx(1.5)  # 3 s of recording at twice the pace
    # Each entry went out when due: at 0, 0.5 and 1.5 s after the start.
    assert [(round(at - 1000.0, 3), [i.seq for i in items]) for at, items in publisher.batches] == [
        (0.0, [1]),
        (0.5, [2]),
        (1.5, [3]),
    ]
    assert publisher.resets == [(["book.XYZ"], stats.epoch)]
    assert stats.events == 3
    assert stats.publications == 3
    assert stats.channels == ["book.XYZ"]
    assert [item.ts for _, items in publisher.batches for item in items] == [
        1_700_000_000_000_000,
        1_700_000_001_000_000,
        1_700_000_003_000_000,
    ]


async def test_max_speed_batches_and_reports_progress(tmp_path: Path) -> None:
    path = _bybit(tmp_path / "a_ob50.data", [1_700_000_000_000 + 10 * i for i in range(25)])
    time = FakeTime()
    publisher = Recorder(time)
    reports: list[Progress] = []
    stats = await replay(
        [path], publisher, None, batch_size=10, progress=reports.append, clock=time.clock
    )
    assert time.sleeps == []
    assert [len(items) for _, items in publisher.batches] == [10, 10, 5]
    assert [i.seq for _, items in publisher.batches for i in items] == list(range(1, 26))
    assert reports[-1].done
    assert reports[-1].events == 25 == stats.events
    assert reports[-1].position_ns == (1_700_000_000_000 + 240) * 1_000_000


async def test_recordings_of_different_years_start_together(tmp_path: Path) -> None:
    new = _bybit(tmp_path / "new_ob50.data", [1_700_000_000_000, 1_700_000_001_000], "NEW")
    old = tmp_path / "KRAKEN.ws.synthetic"
    old.write_text(
        "wss://ws.kraken.com <-> 1500000000.0\n"
        '1500000000.0: [1,{"as":[["2.0","1.0","1"]],"bs":[["1.0","1.0","1"]]},"book-10","O/LD"]\n'
        '1500000002.0: [1,{"a":[["2.0","3.0","2"]]},"book-10","O/LD"]\n'
    )
    time = FakeTime()
    publisher = Recorder(time)
    await replay([new, old], publisher, 1.0, clock=time.clock, sleep=time.sleep)
    assert sum(time.sleeps) == pytest.approx(2.0)  # not the seven years between them
    assert [
        (round(at - 1000.0, 3), [(i.channel, i.seq) for i in items])
        for at, items in publisher.batches
    ] == [
        (0.0, [("book.NEW", 1), ("book.O-LD", 1)]),
        (1.0, [("book.NEW", 2)]),
        (2.0, [("book.O-LD", 2)]),
    ]


async def test_redis_outages_are_retried_without_gaps(tmp_path: Path) -> None:
    path = _bybit(tmp_path / "a_ob50.data", [1_700_000_000_000 + i for i in range(5)])
    time = FakeTime()
    publisher = Recorder(time, failures=2)
    await replay([path], publisher, None, batch_size=2, clock=time.clock, sleep=time.sleep)
    assert [i.seq for _, items in publisher.batches for i in items] == [1, 2, 3, 4, 5]
    assert len(time.sleeps) == 2  # the backoff


async def test_entries_before_a_corrupt_line_are_published_then_it_raises(tmp_path: Path) -> None:
    path = _bybit(tmp_path / "a_ob50.data", [1_700_000_000_000 + i for i in range(4)])
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines[:3], lines[3][:30]]) + "\n")
    time = FakeTime()
    publisher = Recorder(time)
    with pytest.raises(ReplayFormatError, match=r"a_ob50\.data:4: corrupt JSON"):
        await replay([path], publisher, None, clock=time.clock)
    assert [i.seq for _, items in publisher.batches for i in items] == [1, 2, 3]


async def test_the_relay_channel_rebuilds_kraken_books_from_the_streams() -> None:
    store = MemoryStore()
    stats = await replay(
        [market_path("kraken_cryptofeed")], MemoryPublisher(store, maxlen=100_000), None
    )
    assert stats.publications == 4279 + 10  # book entries and trades
    checksums = 0
    for name in stats.channels:
        assert store.hgetall(meta_key("md:", name)) == {b"epoch": stats.epoch.encode()}
        entries = store.stream(stream_key("md:", name))
        if not name.startswith("book."):
            continue
        # The snapshot hash points at an entry of the stream and holds the book there.
        snap = store.hgetall(snapshot_key("md:", name))
        assert snap[b"id"] in {entry.id.encode() for entry in entries}
        channel = Channel(name, Kind.BOOK, history=10, trades_kept=0)
        first = entries[0]
        assert first.fields[b"seq"] == b"1"
        channel.reset(epoch=stats.epoch, seq=1, ts=0, state=orjson.loads(first.fields[b"data"]))
        for entry in entries[1:]:
            channel.apply(entry)
            venue = orjson.loads(entry.fields[b"data"])["venue"]
            assert kraken_checksum(channel.book) == venue["checksum"]
            checksums += 1
            if entry.id.encode() == snap[b"id"]:
                assert orjson.loads(snap[b"data"]) == channel.book.to_payload()
        assert channel.live
        assert channel.seq == len(entries)
    assert checksums == 4269
