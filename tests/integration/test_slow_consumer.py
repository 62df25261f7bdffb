"""A client that does not read is closed with 4000; a reading client on the same channel
keeps gapless delivery (DESIGN.md: nobody waits for a slow consumer)."""

from __future__ import annotations

import asyncio

import orjson
import redis.asyncio as aioredis
from support.client import connect
from support.rawws import RawClient
from support.relay import redis_source, running_relay

from relay.core.book import Book
from relay.producer import Publication, RedisPublisher, Simulator, now_us

CHANNEL = "book.BTC-USD"


def _whole_book_update(sim: Simulator) -> Publication:
    """A diff that re-sends every level unchanged: large, and a no-op for the book."""
    sim.seqs[CHANNEL] += 1
    payload = orjson.dumps(sim.markets[0].book_payload())
    return Publication(CHANNEL, sim.seqs[CHANNEL], now_us(), payload)


async def test_a_client_that_never_reads_is_closed_4000_and_others_keep_up(redis_url: str) -> None:
    publisher = RedisPublisher(aioredis.Redis.from_url(redis_url))
    sim = Simulator(publisher, symbols=1, seed=5, depth=400, snapshot_every=1000)
    await sim.start()
    async with running_relay(
        redis_source(redis_url), slow_consumer_bytes=256 * 1024, slow_close_timeout=30.0
    ) as relay:
        await relay.wait_live(CHANNEL)
        stuck = await RawClient.connect("127.0.0.1", relay.config.port, rcvbuf=4096)
        await stuck.send_text(f'{{"op":"subscribe","channel":"{CHANNEL}","id":1}}')
        async with connect(relay.ws_url) as reader:
            await reader.subscribe(CHANNEL, request_id=1)
            # Big diffs (every level of both sides, re-sent) fill the stuck client's path.
            step = 0
            while relay.metric("relay_slow_consumer_closes_total") == 0:
                step += 1
                assert step < 400, "the stuck client was never found slow"
                await publisher.publish([*sim.step(), _whole_book_update(sim)])
                view = await reader.until(CHANNEL, sim.seqs[CHANNEL])
                assert view.gaps == []
            assert relay.relay.hub.subscriber_count(CHANNEL) == 1  # the reader only
            for _ in range(50):
                await publisher.publish(sim.step())
            view = await reader.until(CHANNEL, sim.seqs[CHANNEL])
            assert view.gaps == []
            assert view.book == Book.from_payload(sim.markets[0].book_payload())
        # Now the stuck client reads: what was queued, then the close frame with 4000.
        async with asyncio.timeout(20):
            while True:
                frame = await stuck.read_frame()
                if frame.opcode == 8:
                    break
        assert frame.close_code == 4000
        stuck.close()
    await publisher.close()


async def test_a_client_whose_backlog_never_drains_is_closed_4000_after_the_lag_limit(
    redis_url: str,
) -> None:
    """The byte limit is out of reach here: the time limit alone must find the client."""
    publisher = RedisPublisher(aioredis.Redis.from_url(redis_url))
    sim = Simulator(publisher, symbols=1, seed=6, depth=400, snapshot_every=1000)
    await sim.start()
    async with running_relay(
        redis_source(redis_url),
        slow_consumer_bytes=1 << 30,
        slow_consumer_seconds=1.0,
        slow_close_timeout=30.0,
    ) as relay:
        await relay.wait_live(CHANNEL)
        stuck = await RawClient.connect("127.0.0.1", relay.config.port, rcvbuf=4096)
        await stuck.send_text(f'{{"op":"subscribe","channel":"{CHANNEL}","id":1}}')
        async with connect(relay.ws_url) as reader:
            await reader.subscribe(CHANNEL, request_id=1)
            loop = asyncio.get_running_loop()
            started = loop.time()
            step = 0
            while relay.metric("relay_slow_consumer_closes_total") == 0:
                step += 1
                assert step < 2000, "the stuck client was never found slow"
                await publisher.publish([*sim.step(), _whole_book_update(sim)])
                view = await reader.until(CHANNEL, sim.seqs[CHANNEL])
                assert view.gaps == []
                await asyncio.sleep(0.005)
            assert loop.time() - started >= 1.0  # not before its backlog was 1 s old
            assert relay.relay.hub.subscriber_count(CHANNEL) == 1  # the reader only
            for _ in range(20):
                await publisher.publish(sim.step())
            view = await reader.until(CHANNEL, sim.seqs[CHANNEL])
            assert view.gaps == []
            assert view.book == Book.from_payload(sim.markets[0].book_payload())
        async with asyncio.timeout(20):
            while True:
                frame = await stuck.read_frame()
                if frame.opcode == 8:
                    break
        assert frame.close_code == 4000
        stuck.close()
    await publisher.close()
