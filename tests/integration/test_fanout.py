"""Many clients on several channels: gapless, duplicate-free, and books equal to the producer's."""

from __future__ import annotations

import asyncio
import contextlib

import redis.asyncio as aioredis
from support.client import Feed, connect
from support.relay import redis_source, running_relay

from relay.core.book import Book
from relay.producer import RedisPublisher, Simulator


async def test_fifty_clients_get_gapless_updates_and_the_producers_books(redis_url: str) -> None:
    publisher = RedisPublisher(aioredis.Redis.from_url(redis_url))
    sim = Simulator(publisher, symbols=3, seed=7, depth=150)
    await sim.start()
    for _ in range(40):  # enough steps for every trades stream to exist
        await publisher.publish(sim.step())
    channels = sim.channels()
    async with running_relay(redis_source(redis_url), trades_snapshot=1000) as relay:
        await relay.wait_live(*channels)
        async with contextlib.AsyncExitStack() as stack:
            feeds: list[tuple[Feed, list[str]]] = []
            for i in range(50):
                feed = await stack.enter_async_context(connect(relay.ws_url))
                mine = sorted({channels[i % 6], channels[(i + 1) % 6], channels[(i + 3) % 6]})
                for n, channel in enumerate(mine):
                    await feed.subscribe(channel, request_id=n)
                feeds.append((feed, mine))
                if i % 10 == 9:  # some clients join mid-stream
                    for _ in range(30):
                        await publisher.publish(sim.step())
                    await asyncio.sleep(0.01)
            for _ in range(100):
                await publisher.publish(sim.step())
            markets = {m.instrument.symbol: m for m in sim.markets}
            for feed, mine in feeds:
                for channel in mine:
                    view = await feed.until(channel, sim.seqs[channel])
                    assert view.gaps == [], channel
                    assert view.snapshots == 1, channel
                    assert view.seq == sim.seqs[channel]
                    if view.updates:  # exactly the seqs after the snapshot, once each
                        first = view.updates[0]
                        assert view.updates == list(range(first, view.seq + 1))
                    kind, symbol = channel.split(".")
                    if kind == "book":
                        expected = Book.from_payload(markets[symbol].book_payload())
                        assert view.book == expected
                        assert view.checksum_failures == []
                        assert view.checksums == len(view.updates) + 1
                    else:  # every trade since the start, in order, none twice
                        ids = [int(trade["id"]) for trade in view.trades]
                        assert ids == list(range(1, markets[symbol].trade_id + 1))
    await publisher.close()
