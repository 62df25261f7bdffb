"""Resume with {epoch, seq} (contract rule 3) against a real redis-server."""

from __future__ import annotations

import redis.asyncio as aioredis
from support.client import connect
from support.relay import redis_source, running_relay

from relay.core.book import Book
from relay.producer import RedisPublisher, Simulator

CHANNEL = "book.BTC-USD"


async def _sim(redis_url: str, steps: int) -> tuple[Simulator, RedisPublisher]:
    publisher = RedisPublisher(aioredis.Redis.from_url(redis_url))
    sim = Simulator(publisher, symbols=1, seed=3)
    await sim.start()
    for _ in range(steps):
        await publisher.publish(sim.step())
    return sim, publisher


async def test_resume_within_history_replays_exactly_the_missed_updates(redis_url: str) -> None:
    sim, publisher = await _sim(redis_url, 20)
    async with running_relay(redis_source(redis_url), history=100) as relay:
        await relay.wait_live(CHANNEL)
        async with connect(relay.ws_url) as first:
            await first.subscribe(CHANNEL, request_id=1)
            view = await first.until(CHANNEL, sim.seqs[CHANNEL])
            epoch, seen, book = view.epoch, view.seq, view.book.copy()
        assert seen is not None
        for _ in range(30):  # missed while disconnected
            await publisher.publish(sim.step())
        async with connect(relay.ws_url) as again:
            await again.subscribe(CHANNEL, request_id=2, resume={"epoch": epoch, "seq": seen})
            subscribed = await again.receive()
            assert subscribed == {
                "type": "subscribed", "id": 2, "channel": CHANNEL,
                "epoch": epoch, "seq": seen, "resumed": True,
            }  # fmt: skip
            again.views[CHANNEL].book = book  # the client's own state, kept across the cut
            view = await again.until(CHANNEL, sim.seqs[CHANNEL])
            assert view.snapshots == 0
            assert view.updates == list(range(seen + 1, sim.seqs[CHANNEL] + 1))
            assert view.book == Book.from_payload(sim.markets[0].book_payload())
    await publisher.close()


async def test_resume_beyond_history_or_epoch_gets_a_snapshot(redis_url: str) -> None:
    sim, publisher = await _sim(redis_url, 50)
    async with running_relay(redis_source(redis_url), history=10) as relay:
        await relay.wait_live(CHANNEL)
        channel = relay.relay.hub.channels[CHANNEL]
        cases = [
            {"epoch": sim.epoch, "seq": 5},  # older than the 10 kept
            {"epoch": "another-epoch", "seq": channel.seq - 1},
            {"epoch": sim.epoch, "seq": channel.seq + 1000},  # ahead of the producer
            {"epoch": sim.epoch, "seq": -1},
        ]
        for n, resume in enumerate(cases):
            async with connect(relay.ws_url) as feed:
                await feed.subscribe(CHANNEL, request_id=n, resume=resume)
                subscribed = await feed.receive()
                assert subscribed["resumed"] is False
                assert subscribed["seq"] == channel.seq
                snapshot = await feed.receive()
                assert snapshot["type"] == "snapshot"
                assert snapshot["seq"] == channel.seq
                assert Book.from_payload(snapshot["data"]) == Book.from_payload(
                    sim.markets[0].book_payload()
                )
        assert relay.metric("relay_resumes_total", {"outcome": "snapshot"}) == len(cases)
    await publisher.close()


async def test_resume_at_the_live_seq_needs_nothing(redis_url: str) -> None:
    sim, publisher = await _sim(redis_url, 5)
    async with running_relay(redis_source(redis_url)) as relay:
        await relay.wait_live(CHANNEL)
        async with connect(relay.ws_url) as feed:
            live = sim.seqs[CHANNEL]
            await feed.subscribe(CHANNEL, resume={"epoch": sim.epoch, "seq": live})
            assert (await feed.receive())["resumed"] is True
            await publisher.publish(sim.step())
            update = await feed.receive()
            assert (update["type"], update["seq"]) == ("update", live + 1)
    await publisher.close()
