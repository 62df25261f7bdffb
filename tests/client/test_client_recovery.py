"""Recovery against real relays: cuts, a restart on the same port, failover to a replica on
the same Redis, and a checksum mismatch. The user never sees a gap, and the counters say
what happened."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
import redis.asyncio as aioredis
from support.relay import RunningRelay, redis_source, running_relay

from client.harness import (
    Recorder,
    assert_same_as_producer,
    caught_up,
    fast_client,
    memory_market,
    publisher_market,
)
from relay.client import (
    BookSnapshot,
    BookUpdate,
    ChannelStatus,
    Connected,
    Disconnected,
    Event,
    TradeUpdate,
)
from relay.core.protocol import CloseCode
from relay.producer import RedisPublisher
from relay.redisproc import free_port


async def close_every_client(relay: RunningRelay, code: CloseCode, reason: str) -> None:
    connections = list(relay.relay.connections)
    assert connections
    await asyncio.gather(*(conn.close(code, reason) for conn in connections))


def assert_no_gap_seen(recorder: Recorder) -> None:
    """Per channel, every update the user got follows the one before, or a snapshot."""
    last: dict[str, int] = {}
    for event in recorder.events:
        if isinstance(event, BookSnapshot):
            last[event.channel] = event.seq
        elif isinstance(event, BookUpdate | TradeUpdate):
            if event.channel in last:
                assert event.seq == last[event.channel] + 1, event
            last[event.channel] = event.seq
    assert recorder.book_seqs_matched


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (CloseCode.GOING_AWAY, "relay shutting down"),
        (CloseCode.SLOW_CONSUMER, "slow consumer"),
        (CloseCode.POLICY_VIOLATION, "rate limit exceeded"),
        (CloseCode.INTERNAL_ERROR, ""),
    ],
)
async def test_a_connection_the_relay_closes_is_resumed_without_a_gap(
    code: CloseCode, reason: str
) -> None:
    market = await memory_market(symbols=2)
    async with running_relay(market.source()) as relay:
        await relay.wait_live("book.BTC-USD", "book.ETH-USD")
        recorder = Recorder()
        client = fast_client(relay.ws_url, market.channels)
        client.on(Event, recorder)
        async with client:
            await market.produce(20)
            await caught_up(client, market)
            await close_every_client(relay, code, reason)
            await market.produce(20)  # some of it sent while the client is away
            await caught_up(client, market)
            assert_same_as_producer(client, market)
            for name in market.channels:
                counters = client.counters(name)
                assert (counters.reconnects, counters.resumes_replayed) == (1, 1), name
                assert (counters.snapshots, counters.resumes_snapshot, counters.gaps) == (1, 0, 0)
            stats = client.stats
        [gone] = recorder.of(Disconnected)
        assert (gone.code, gone.reason) == (code, reason)
        assert gone.delay <= 0.2
        assert len(recorder.of(Connected)) == 2
        assert stats.close_codes == {int(code): 1}
        for name in market.channels:
            assert recorder.statuses(name) == [
                ("live", "snapshot"),
                ("reconnecting", "disconnected"),
                ("live", "resumed"),
            ]
        assert_no_gap_seen(recorder)


async def test_a_relay_restarted_on_the_same_port_is_resumed() -> None:
    market = await memory_market(symbols=2)
    port = free_port()
    recorder = Recorder()
    async with running_relay(market.source(), port=port) as first:
        await first.wait_live("book.BTC-USD", "book.ETH-USD")
        client = fast_client(first.ws_url, market.channels)
        client.on(Event, recorder)
        await client.start()
        await market.produce(20)
        await caught_up(client, market)
    # Down: the client was told 1001 and retries against a closed port.
    await market.produce(25)
    try:
        async with asyncio.timeout(5):
            while client.stats.connect_failures == 0:
                await asyncio.sleep(0.01)
        async with running_relay(market.source(), port=port):
            await caught_up(client, market)
            assert_same_as_producer(client, market)
            await market.produce(10)
            await caught_up(client, market)
            assert_same_as_producer(client, market)
            await client.close()
    finally:
        await client.close()
    assert recorder.of(Disconnected)[0].code == CloseCode.GOING_AWAY
    assert [d.code for d in recorder.of(Disconnected)[1:]] == [None] * (
        len(recorder.of(Disconnected)) - 1
    )  # then the attempts that found nobody
    for name in ("book.BTC-USD", "book.ETH-USD"):
        counters = client.counters(name)
        # The new relay rebuilt the book from the producer's snapshot and stream: its
        # history covers the client's seq, so the 25 updates missed are replayed.
        assert (counters.resumes_replayed, counters.resumes_snapshot) == (1, 0)
        assert (counters.snapshots, counters.gaps, counters.checksum_failures) == (1, 0, 0)
    for name in ("trades.BTC-USD", "trades.ETH-USD"):
        counters = client.counters(name)
        # A relay's cold start keeps no trades history: missed trades come as a snapshot.
        assert counters.resumes_replayed + counters.resumes_snapshot == 1
        assert counters.gaps == 0
    assert_no_gap_seen(recorder)


@pytest.mark.redis
async def test_failover_to_a_second_relay_on_the_same_redis(redis_url: str) -> None:
    publisher = RedisPublisher(aioredis.Redis.from_url(redis_url))
    market = await publisher_market(publisher, symbols=2)
    recorder = Recorder()
    async with (
        running_relay(redis_source(redis_url)) as standby,
        contextlib.AsyncExitStack() as stack,
    ):
        primary = await stack.enter_async_context(running_relay(redis_source(redis_url)))
        books = ("book.BTC-USD", "book.ETH-USD")
        await primary.wait_live(*books)
        await standby.wait_live(*books)
        client = fast_client([primary.ws_url, standby.ws_url], market.channels)
        client.on(Event, recorder)
        async with client:
            await market.produce(20)
            await caught_up(client, market)
            assert client.url == primary.ws_url
            await stack.aclose()  # the primary shuts down: 1001 to every client
            await market.produce(20)
            await caught_up(client, market)
            assert client.url == standby.ws_url
            assert_same_as_producer(client, market)
            for name in market.channels:
                counters = client.counters(name)
                assert (counters.resumes_replayed, counters.resumes_snapshot) == (1, 0), name
                assert (counters.snapshots, counters.gaps) == (1, 0), name
    await publisher.close()
    assert [c.url for c in recorder.of(Connected)] == [primary.ws_url, standby.ws_url]
    assert [d.code for d in recorder.of(Disconnected)] == [CloseCode.GOING_AWAY]
    assert_no_gap_seen(recorder)


async def test_a_checksum_mismatch_discards_the_book_and_recovers_from_a_snapshot() -> None:
    market = await memory_market(symbols=2)
    async with running_relay(market.source()) as relay:
        await relay.wait_live("book.BTC-USD", "book.ETH-USD")
        recorder = Recorder()
        client = fast_client(relay.ws_url, ["book.BTC-USD", "book.ETH-USD"])
        client.on(Event, recorder)
        async with client:
            await caught_up(client, market)
            book = client.book("book.BTC-USD")
            assert book is not None
            # Corrupt the local book: a bid at a price the producer never writes (its
            # tick is 0.5), inside the spread, so every checksum after this differs.
            best = book.best_bid()
            assert best is not None
            book._book.apply({"bids": [[best[0] + "1", "1"]]})
            corrupted_at = len(recorder.events)
            await market.produce(10)
            await caught_up(client, market)
            assert_same_as_producer(client, market)
            counters = client.counters("book.BTC-USD")
            assert (counters.checksum_failures, counters.resubscribes, counters.snapshots) == (
                1,
                1,
                2,
            )
            assert client.book("book.BTC-USD") is not book  # a new book from the snapshot
            other = client.counters("book.ETH-USD")
            assert (other.checksum_failures, other.resubscribes, other.snapshots) == (0, 0, 1)
    after = [
        e for e in recorder.events[corrupted_at:] if getattr(e, "channel", "") == "book.BTC-USD"
    ]
    assert recorder.statuses("book.BTC-USD")[-2:] == [
        ("resyncing", "checksum"),
        ("live", "snapshot"),
    ]
    # Nothing between the mismatch and the fresh snapshot reaches the user.
    kinds = [type(e).__name__ for e in after]
    assert kinds[:3] == ["StatusChanged", "StatusChanged", "BookSnapshot"]
    assert set(kinds[3:]) <= {"BookUpdate"}
    assert_no_gap_seen(recorder)
    assert client.status("book.BTC-USD") is ChannelStatus.CLOSED
