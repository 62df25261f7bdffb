"""A producer that repeats a seq, then one that skips seqs (docs/faults.md).

The relay never applies an entry that is not exactly the next seq: the channel waits for
a producer snapshot written after the fault, and its subscribers get that snapshot. No
client sees a seq twice or a seq after a hole, and every book ends equal to the
producer's (which includes the diffs of the seqs it skipped writing)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from support.client import Feed, connect
from support.producer import RawProducer
from support.relay import redis_source, running_relay

from faults.harness import Outcome, commandstats, wait_for
from relay.core.book import Book
from relay.redisproc import RedisProcess

CHANNEL = "book.DUP-USD"


class BookProducer:
    """Writes book diffs with chosen seqs; keeps the book as the producer knows it."""

    def __init__(self, raw: RawProducer) -> None:
        self.raw = raw
        self.book = Book()
        self.seq = 0

    @staticmethod
    def diff(seq: int) -> dict[str, Any]:
        # Bids below 100, asks above: never crossed, and a level changes on every seq.
        return {"bids": [[str(1 + seq % 90), str(seq)]], "asks": [[str(101 + seq % 90), str(seq)]]}

    async def open(self) -> None:
        await self.raw.epoch(CHANNEL, "e1")
        self.seq = 1
        self.book.apply(self.diff(1))
        payload = self.book.to_payload()
        entry_id = await self.raw.add(CHANNEL, 1, payload)
        await self.raw.snapshot(CHANNEL, 1, entry_id, payload)

    async def next(self, *, write: bool = True, snapshot: bool = False) -> None:
        """The next seq: applied to the producer's book; written unless ``write`` is off
        (a skipped seq); with the snapshot hash pointing at it when ``snapshot``."""
        self.seq += 1
        diff = self.diff(self.seq)
        self.book.apply(diff)
        if not write:
            return
        entry_id = await self.raw.add(CHANNEL, self.seq, diff)
        if snapshot:
            await self.raw.snapshot(CHANNEL, self.seq, entry_id, self.book.to_payload())

    async def repeat(self) -> None:
        """The last seq once more, with the same data: a retried write."""
        await self.raw.add(CHANNEL, self.seq, self.diff(self.seq))


async def _read(feed: Feed) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        while True:
            await feed.receive(timeout=30)


async def test_repeated_and_skipped_seqs_reach_clients_as_snapshots(redis_url: str) -> None:
    raw = RawProducer(redis_url)
    producer = BookProducer(raw)
    await producer.open()
    async with (
        asyncio.timeout(60),
        running_relay(redis_source(redis_url)) as relay,
        contextlib.AsyncExitStack() as stack,
    ):
        await relay.wait_live(CHANNEL)
        feeds = [await stack.enter_async_context(connect(relay.ws_url)) for _ in range(3)]
        for feed in feeds:
            await feed.subscribe(CHANNEL, request_id=1)
        readers = [asyncio.create_task(_read(feed)) for feed in feeds]

        def at(seq: int) -> bool:
            return all(
                CHANNEL in f.views and f.views[CHANNEL].seq == seq and f.views[CHANNEL].epoch
                for f in feeds
            )

        await wait_for(lambda: at(1), 10, "the first snapshot")
        for _ in range(19):
            await producer.next()
        await wait_for(lambda: at(20), 10, "seq 20")

        # A repeated seq: nothing after it is applied until a snapshot follows it.
        await producer.repeat()
        for _ in range(10):
            await producer.next()
        started = time.monotonic()
        await producer.next(snapshot=True)  # 31
        await wait_for(lambda: at(31), 10, "the snapshot at 31")
        repeat_recovery = time.monotonic() - started

        # Skipped seqs (41 and 42 never written), then a snapshot at 51.
        for seq in range(32, 52):
            await producer.next(write=seq not in (41, 42), snapshot=seq == 51)
        started = time.monotonic()
        for _ in range(4):
            await producer.next()
        await wait_for(lambda: at(55), 10, "seq 55")
        skip_recovery = time.monotonic() - started

        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers)
        for feed in feeds:
            view = feed.views[CHANNEL]
            assert view.gaps == []
            assert view.checksum_failures == []
            assert len(view.updates) == len(set(view.updates))  # no seq delivered twice
            assert view.updates[:19] == list(range(2, 21))
            assert not set(view.updates) & set(range(21, 32))  # after the repeat: snapshot
            assert not set(view.updates) & set(range(41, 52))  # after the hole: snapshot
            # Snapshots: the first, then one at or after each snapshot that followed a fault
            # (the relay rebuilds from it and applies what the stream holds after it).
            first, after_repeat, after_skip = (
                f["seq"] for f in feed.frames if f["type"] == "snapshot"
            )
            assert (first, after_repeat) == (1, 31)
            assert 51 <= after_skip <= 55
            assert view.book == producer.book
        assert relay.metric("relay_source_resyncs_total", {"reason": "backwards"}) >= 1
        assert relay.metric("relay_source_gaps_total") >= 1
    await raw.close()
    Outcome("producer repeats a seq", 0, 1, repeat_recovery).report()
    Outcome("producer skips seqs", 0, 1, skip_recovery).report()


async def test_a_channel_that_cannot_be_rebuilt_is_retried_about_once_a_second() -> None:
    """A repeated seq with no snapshot after it: the channel cannot be rebuilt until the
    producer writes one. The relay retries sooner at first (a producer opening a new
    epoch is caught at once), then about once a second: bounded Redis reads, no spin."""
    with RedisProcess() as server:
        raw = RawProducer(server.url)
        producer = BookProducer(raw)
        await producer.open()
        async with asyncio.timeout(30), running_relay(redis_source(server.url)) as relay:
            await relay.wait_live(CHANNEL)
            await producer.next()
            await producer.repeat()
            await wait_for(lambda: not relay.relay.hub.channels[CHANNEL].live, 10, "a resync")
            before = (await commandstats(server.url)).get("hgetall", 0)
            started = time.monotonic()
            await asyncio.sleep(4.0)  # the window over which the retries are counted
            tries = (await commandstats(server.url)).get("hgetall", 0) - before
            seconds = time.monotonic() - started
            # Delays grow from 0.05 s to between 0.5 and 1 s: about 9 tries in the first
            # 2 s, then 1 to 2 a second.
            assert 3 <= tries <= 10 + 2 * seconds, tries
            assert not relay.relay.hub.channels[CHANNEL].live
            await producer.next(snapshot=True)
            await relay.wait_live(CHANNEL, timeout=5)
        await raw.close()
