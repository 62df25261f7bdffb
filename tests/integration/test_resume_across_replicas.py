"""Resume works against any replica (contract rule 3): two `relay serve` processes on one
Redis; a client cut off from the first resumes on the second with exactly the updates it
missed: no snapshot, no gap, no duplicate."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis
from support.client import connect
from support.relay import wait_ready

from relay.core.book import Book
from relay.producer import RedisPublisher, Simulator
from relay.redisproc import free_port

CHANNEL = "book.BTC-USD"


@pytest.fixture
def replicas(redis_url: str) -> Iterator[tuple[int, int]]:
    ports = (free_port(), free_port())
    env = {**os.environ, "RELAY_REDIS_URL": redis_url, "RELAY_READ_BLOCK_MS": "100"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "relay.cli", "serve", "--host", "127.0.0.1", "--port", str(p)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for p in ports
    ]
    try:
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)


async def test_a_client_cut_from_one_replica_resumes_on_the_other(
    redis_url: str, replicas: tuple[int, int]
) -> None:
    publisher = RedisPublisher(aioredis.Redis.from_url(redis_url))
    sim = Simulator(publisher, symbols=1, seed=29)
    await sim.start()
    first, second = replicas
    await wait_ready(first)
    await wait_ready(second)
    for _ in range(20):
        await publisher.publish(sim.step())
    async with connect(f"http://127.0.0.1:{first}/ws") as feed:
        await feed.subscribe(CHANNEL, request_id=1)
        view = await feed.until(CHANNEL, sim.seqs[CHANNEL])
        epoch, seen, book = view.epoch, view.seq, view.book.copy()
    assert seen is not None
    for _ in range(40):  # missed while cut off
        await publisher.publish(sim.step())
    async with connect(f"http://127.0.0.1:{second}/ws") as feed:
        await feed.subscribe(CHANNEL, request_id=2, resume={"epoch": epoch, "seq": seen})
        subscribed = await feed.receive()
        assert (subscribed["type"], subscribed["resumed"], subscribed["seq"]) == (
            "subscribed",
            True,
            seen,
        )
        feed.views[CHANNEL].book = book  # the client's own state, kept across the cut
        view = await feed.until(CHANNEL, sim.seqs[CHANNEL])
        assert view.snapshots == 0
        assert view.updates == list(range(seen + 1, sim.seqs[CHANNEL] + 1))
        assert view.checksum_failures == []
        assert view.book == Book.from_payload(sim.markets[0].book_payload())
    await publisher.close()
