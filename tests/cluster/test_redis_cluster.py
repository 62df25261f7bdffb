"""The relay against a real 3-master Redis Cluster: discovery across nodes, reads that never
cross slots, and a node restart survived like a Redis restart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from support.client import Feed, connect
from support.cluster import Cluster
from support.relay import running_relay, stop_producing

from relay.core.book import Book
from relay.producer import Simulator, redis_publisher
from relay.redisproc import available
from relay.source.base import stream_key
from relay.source.redis import open_source

pytestmark = pytest.mark.skipif(not available(), reason="needs redis-server on PATH")


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    made = Cluster()
    try:
        await asyncio.to_thread(made.start)
        yield made
    finally:
        await asyncio.to_thread(made.cleanup)


async def _check_books(feed: Feed, sim: Simulator) -> None:
    for market in sim.markets:
        channel = f"book.{market.instrument.symbol}"
        view = await feed.until(channel, sim.seqs[channel], timeout=20)
        assert view.gaps == [], channel
        assert view.checksum_failures == []
        assert view.book == Book.from_payload(market.book_payload())


async def test_relay_on_a_cluster_survives_a_node_restart(cluster: Cluster) -> None:
    async with asyncio.timeout(90):  # a hang fails here, with the stack of the await
        await _node_restart(cluster)


async def _node_restart(cluster: Cluster) -> None:
    publisher = redis_publisher(cluster.url)
    sim = Simulator(publisher, symbols=6, seed=13, rate=100.0)
    await sim.start()
    books = [f"book.{m.instrument.symbol}" for m in sim.markets]
    nodes = {publisher.client.get_node_from_key(stream_key("md:", c)).port for c in books}  # type: ignore[attr-defined]
    assert len(nodes) >= 2, "the channels should spread over several masters"
    source = open_source(cluster.url, "md:", read_timeout=3.0, poll_ms=5)
    async with running_relay(source) as relay, connect(relay.ws_url) as feed:
        await relay.wait_live(*books, timeout=20)
        for n, channel in enumerate(books):
            await feed.subscribe(channel, request_id=n)
        stop = asyncio.Event()
        producing = asyncio.create_task(sim.run(stop=stop))
        try:
            await feed.until(books[0], 50, timeout=20)
            victim = cluster.nodes[1]
            await asyncio.to_thread(victim.stop)
            await asyncio.sleep(1.0)
            await asyncio.to_thread(victim.start)
            await asyncio.to_thread(cluster.wait_ok)
            await feed.until(books[0], sim.seqs[books[0]] + 50, timeout=30)
        finally:
            await stop_producing(producing, stop)
        await _check_books(feed, sim)
    await publisher.close()
