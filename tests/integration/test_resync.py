"""Contract rule 4: when the source skips, repeats, breaks or restarts, clients get a fresh
snapshot, never a silent gap. Driven by hand so that seq, epoch and snapshot are exact."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from support.client import Feed, connect
from support.producer import RawProducer
from support.relay import RunningRelay, redis_source, running_relay

from relay.core.book import Book

BOOK = "book.BTC-USD"
OTHER = "book.ETH-USD"
START = {"bids": [["100.0", "1"]], "asks": [["101.0", "1"]]}


def level(price: str, size: str, side: str = "bids") -> dict[str, list[list[str]]]:
    return (
        {"bids": [[price, size]], "asks": []}
        if side == "bids"
        else {"bids": [], "asks": [[price, size]]}
    )


@pytest.fixture
async def producer(redis_url: str) -> AsyncIterator[RawProducer]:
    producer = RawProducer(redis_url)
    for channel in (BOOK, OTHER):
        await producer.epoch(channel, "e1")
        first = await producer.add(channel, 1, START)
        await producer.snapshot(channel, 1, first, START)
        for seq in range(2, 6):
            await producer.add(channel, seq, level(f"99.{seq}", "2"))
    yield producer
    await producer.close()


async def _snapshot_in_epoch(feed: Feed, epoch: str) -> None:
    async with asyncio.timeout(10):
        while not any(f["type"] == "snapshot" and f.get("epoch") == epoch for f in feed.frames):
            await feed.receive()


async def _subscribed(relay: RunningRelay, feed: Feed, channel: str) -> None:
    await relay.wait_live(channel)
    await feed.subscribe(channel, request_id=1)
    await feed.until(channel, 5)


async def test_a_producer_gap_gives_a_fresh_snapshot_once_the_producer_has_one(
    redis_url: str, producer: RawProducer
) -> None:
    async with running_relay(redis_source(redis_url)) as relay, connect(relay.ws_url) as feed:
        await _subscribed(relay, feed, BOOK)
        # seq 6 never reaches the stream; the relay must not pass 7 on as if nothing happened
        seven = await producer.add(BOOK, 7, level("98.0", "3"))
        producer_book = {
            "bids": [["100.0", "1"], ["99.5", "2"], ["98.0", "3"]],
            "asks": [["101.0", "1"]],
        }
        await producer.snapshot(BOOK, 7, seven, producer_book)
        await producer.add(BOOK, 8, level("97.0", "4"))
        view = await feed.until(BOOK, 8)
        kinds = [
            (f["type"], f["seq"]) for f in feed.frames if f.get("channel") == BOOK and "seq" in f
        ]
        # The fresh snapshot is at 7, or at 8 if the rebuild read 8 too; 7 is never an update.
        assert kinds[-1] in {("snapshot", 8), ("update", 8)}
        assert ("snapshot", 7) in kinds or kinds[-1] == ("snapshot", 8)
        assert ("update", 7) not in kinds
        assert view.snapshots == 2
        assert view.book.bid_levels() == [
            ("100.0", "1"),
            ("99.5", "2"),
            ("98.0", "3"),
            ("97.0", "4"),
        ]
        assert relay.metric("relay_source_resyncs_total", {"reason": "gap"}) == 1


async def test_a_repeated_seq_gives_a_fresh_snapshot(redis_url: str, producer: RawProducer) -> None:
    async with running_relay(redis_source(redis_url)) as relay, connect(relay.ws_url) as feed:
        await _subscribed(relay, feed, BOOK)
        again = await producer.add(BOOK, 5, level("99.5", "9"))  # a duplicate seq
        await producer.snapshot(
            BOOK, 5, again, {"bids": [["100.0", "1"], ["99.5", "9"]], "asks": [["101.0", "1"]]}
        )
        await producer.add(BOOK, 6, level("96.0", "1"))
        view = await feed.until(BOOK, 6)
        assert view.snapshots == 2
        assert view.gaps == []
        assert relay.metric("relay_source_resyncs_total", {"reason": "backwards"}) == 1


async def test_a_malformed_entry_stalls_only_its_channel_until_a_new_snapshot(
    redis_url: str, producer: RawProducer
) -> None:
    async with (
        running_relay(redis_source(redis_url)) as relay,
        connect(relay.ws_url) as feed,
        connect(relay.ws_url) as other,
    ):
        await _subscribed(relay, feed, BOOK)
        await _subscribed(relay, other, OTHER)
        await producer.add(BOOK, 6, b'{"bids": [["99.0", oops')
        for seq in range(6, 10):
            await producer.add(OTHER, seq, level(f"98.{seq}", "1"))
        assert (await other.until(OTHER, 9)).gaps == []
        seven = await producer.add(BOOK, 7, level("95.0", "1"))
        await producer.snapshot(
            BOOK, 7, seven, {"bids": [["100.0", "1"], ["95.0", "1"]], "asks": []}
        )
        view = await feed.until(BOOK, 7)
        assert [f["type"] for f in feed.frames if f.get("seq") == 7] == ["snapshot"]
        assert view.book.bid_levels() == [("100.0", "1"), ("95.0", "1")]
        assert relay.metric("relay_malformed_entries_total") >= 1
        assert relay.metric("relay_source_resyncs_total", {"reason": "malformed"}) == 1


@pytest.mark.parametrize(
    "fields",
    [
        {"ts": "1", "data": "{}"},  # no seq
        {"seq": "6", "data": "{}"},  # no ts
        {"seq": "6", "ts": "1"},  # no data
        {"seq": "six", "ts": "1", "data": "{}"},
        {"seq": "6", "ts": "1", "data": '{"bids": [["x", "1"]]}'},  # bad number
        {"seq": "6", "ts": "1", "data": '["not", "an", "object"]'},
    ],
)
async def test_every_kind_of_malformed_entry_is_counted_and_never_delivered(
    redis_url: str, producer: RawProducer, fields: dict[str, str]
) -> None:
    async with running_relay(redis_source(redis_url)) as relay, connect(relay.ws_url) as feed:
        await _subscribed(relay, feed, BOOK)
        await producer.add_fields(BOOK, fields)
        seven = await producer.add(BOOK, 7, level("95.0", "1"))
        await producer.snapshot(BOOK, 7, seven, START)
        await feed.until(BOOK, 7)
        assert [f["type"] for f in feed.frames if f.get("channel") == BOOK][-1] == "snapshot"
        assert relay.metric("relay_malformed_entries_total") >= 1


async def test_a_new_epoch_gives_a_fresh_snapshot_in_that_epoch(
    redis_url: str, producer: RawProducer
) -> None:
    async with running_relay(redis_source(redis_url)) as relay, connect(relay.ws_url) as feed:
        await _subscribed(relay, feed, BOOK)
        # The producer restarts: new epoch, numbering from 1 again, stream recreated.
        await producer.client.delete("md:{book.BTC-USD}")
        await producer.epoch(BOOK, "e2")
        restart = {"bids": [["50.0", "5"]], "asks": [["51.0", "5"]]}
        first = await producer.add(BOOK, 1, restart)
        await producer.snapshot(BOOK, 1, first, restart)
        await producer.add(BOOK, 2, level("49.0", "1"))
        await _snapshot_in_epoch(feed, "e2")
        view = await feed.until(BOOK, 2)
        assert view.epoch == "e2"
        assert view.book.bid_levels() == [("50.0", "5"), ("49.0", "1")]


async def test_an_epoch_change_with_continuing_seqs_is_caught_by_the_epoch_check(
    redis_url: str, producer: RawProducer
) -> None:
    async with running_relay(redis_source(redis_url)) as relay, connect(relay.ws_url) as feed:
        await _subscribed(relay, feed, BOOK)
        # Numbering restarted at a seq that happens to follow on: only the epoch tells.
        await producer.epoch(BOOK, "e2")
        six = await producer.add(BOOK, 6, level("10.0", "1"))
        await producer.snapshot(BOOK, 6, six, {"bids": [["10.0", "1"]], "asks": []})
        await _snapshot_in_epoch(feed, "e2")
        assert relay.metric("relay_source_resyncs_total", {"reason": "epoch"}) == 1


async def test_a_crossing_update_is_held_back_counted_and_rebuilt(
    redis_url: str, producer: RawProducer
) -> None:
    async with running_relay(redis_source(redis_url)) as relay, connect(relay.ws_url) as feed:
        await _subscribed(relay, feed, BOOK)
        await producer.add(BOOK, 6, level("101.5", "1"))  # a bid above the best ask 101.0
        fixed = {"bids": [["100.0", "1"]], "asks": [["102.0", "1"]]}
        seven = await producer.add(
            BOOK, 7, {"bids": [["101.5", "0"]], "asks": [["101.0", "0"], ["102.0", "1"]]}
        )
        await producer.snapshot(BOOK, 7, seven, fixed)
        view = await feed.until(BOOK, 7)
        assert not [f for f in feed.frames if f.get("type") == "update" and f["seq"] == 6]
        assert view.book == Book.from_payload(fixed)
        assert relay.metric("relay_source_resyncs_total", {"reason": "crossed"}) == 1
