"""A rolling restart loses no client's data: one of two relays shuts down under load, its
clients are told when to come back (spread over the window), reconnect to the other
relay and resume there with {epoch, seq}: no gap, no snapshot, books still exact."""

from __future__ import annotations

import asyncio
import contextlib

import redis.asyncio as aioredis
from support.relay import redis_source, running_relay, stop_producing

from relay.client import Client, Disconnected
from relay.core.book import Book
from relay.producer import RedisPublisher, Simulator

CLIENTS = 10
WINDOW = 2.0


async def test_clients_of_a_stopped_relay_resume_on_the_other_without_a_gap(redis_url: str) -> None:
    async with asyncio.timeout(100):  # a hang fails here, with the stack of the await
        await _rollout(redis_url)


async def _rollout(redis_url: str) -> None:
    publisher = RedisPublisher(aioredis.Redis.from_url(redis_url))
    sim = Simulator(publisher, symbols=2, seed=17, rate=50.0)
    await sim.start()
    books = [f"book.{m.instrument.symbol}" for m in sim.markets]
    stop = asyncio.Event()
    producing = asyncio.create_task(sim.run(stop=stop))
    delays: list[float] = []
    try:
        async with running_relay(redis_source(redis_url)) as survivor:
            await survivor.wait_live(*books)
            leaving_ctx = running_relay(redis_source(redis_url), reconnect_window=WINDOW)
            leaving = await leaving_ctx.__aenter__()
            await leaving.wait_live(*books)
            async with contextlib.AsyncExitStack() as stack:
                clients = []
                for _ in range(CLIENTS):
                    client = Client([leaving.ws_url, survivor.ws_url], books)
                    client.on(
                        Disconnected, lambda e: delays.append(e.delay) if e.code == 1001 else None
                    )
                    clients.append(await stack.enter_async_context(client))
                async with asyncio.timeout(20):
                    while leaving.relay.hub.subscriber_count(books[0]) < CLIENTS:
                        await asyncio.sleep(0.05)
                await asyncio.sleep(0.5)  # under load: updates flowing to every client
                await leaving_ctx.__aexit__(None, None, None)  # SIGTERM's path: 1001 to all
                async with asyncio.timeout(20):
                    while survivor.relay.hub.subscriber_count(books[0]) < CLIENTS:
                        await asyncio.sleep(0.05)
                await asyncio.sleep(0.5)
                await stop_producing(producing, stop)
                async with asyncio.timeout(20):
                    for client in clients:
                        for channel in books:
                            while (client.position(channel) or ("", 0))[1] < sim.seqs[channel]:
                                await asyncio.sleep(0.02)
                for client in clients:
                    for market, channel in zip(sim.markets, books, strict=True):
                        counters = client.counters(channel)
                        assert counters.gaps == 0
                        assert counters.checksum_failures == 0
                        assert counters.snapshots == 1  # the first one only: resumed, not resent
                        assert counters.resumes_replayed == 1
                        expected = Book.from_payload(market.book_payload())
                        book = client.book(channel)
                        assert book is not None
                        assert (book.bids(), book.asks()) == (
                            expected.bid_levels(),
                            expected.ask_levels(),
                        )
    finally:
        await stop_producing(producing, stop)
        await publisher.close()
    assert len(delays) == CLIENTS
    assert all(0 <= d <= WINDOW for d in delays)
    assert max(delays) - min(delays) > WINDOW / 4  # spread out, not all in the same instant
