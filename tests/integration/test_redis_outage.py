"""Redis stopped and restarted mid-stream: clients stay connected and lose nothing the
stream still holds (DESIGN.md, "Redis gone")."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from support.client import connect
from support.relay import redis_source, running_relay, stop_producing

from relay.core.book import Book
from relay.producer import RedisPublisher, Simulator
from relay.redisproc import RedisProcess

CHANNEL = "book.BTC-USD"


async def test_redis_restart_mid_stream_loses_nothing() -> None:
    async with asyncio.timeout(60):  # a hang fails here, with the stack of the await
        await _restart_mid_stream()


async def _restart_mid_stream() -> None:
    server = RedisProcess(appendonly=True)  # the data survives the restart, as in production
    await asyncio.to_thread(server.start)
    publisher = RedisPublisher(aioredis.Redis.from_url(server.url, socket_timeout=1.0))
    sim = Simulator(publisher, symbols=1, seed=11, rate=200.0)
    await sim.start()
    try:
        async with running_relay(redis_source(server.url)) as relay, connect(relay.ws_url) as feed:
            await relay.wait_live(CHANNEL)
            await feed.subscribe(CHANNEL, request_id=1)
            stop = asyncio.Event()
            producing = asyncio.create_task(sim.run(stop=stop))
            await feed.until(CHANNEL, 100)
            await asyncio.to_thread(server.stop)
            await asyncio.sleep(1.0)  # the relay notices and backs off; the producer waits
            assert relay.metric("relay_redis_errors_total") >= 1
            await asyncio.to_thread(server.start)
            await feed.until(CHANNEL, sim.seqs[CHANNEL] + 100, timeout=20)
            await stop_producing(producing, stop)
            view = await feed.until(CHANNEL, sim.seqs[CHANNEL], timeout=20)
            assert view.gaps == []
            assert view.snapshots == 1  # resumed from the last id: no rebuild was needed
            assert view.book == Book.from_payload(sim.markets[0].book_payload())
            assert not feed.ws.closed
    finally:
        await publisher.close()
        await asyncio.to_thread(server.cleanup)
