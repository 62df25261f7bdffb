"""Cold start: snapshot hash, then the stream after it, then live (DESIGN.md, "State and
recovery"); readiness and the channel list say so."""

from __future__ import annotations

import aiohttp
import redis.asyncio as aioredis
from support.client import connect
from support.relay import redis_source, running_relay

from relay.core.book import Book
from relay.producer import RedisPublisher, Simulator
from relay.source.base import snapshot_key


async def test_a_relay_started_late_serves_the_producers_current_state(redis_url: str) -> None:
    publisher = RedisPublisher(aioredis.Redis.from_url(redis_url))
    sim = Simulator(publisher, symbols=2, seed=21, snapshot_every=50)
    await sim.start()
    for _ in range(79):
        await publisher.publish(sim.step())
    book_seq = sim.seqs["book.BTC-USD"]
    assert book_seq == 80
    raw_seq = await publisher.client.hget(snapshot_key("md:", "book.BTC-USD"), "seq")
    assert isinstance(raw_seq, bytes)
    snapshot_seq = int(raw_seq)
    assert snapshot_seq == 50  # so the relay must replay 51..80 from the stream

    async with running_relay(redis_source(redis_url), trades_snapshot=5) as relay:
        await relay.wait_live(*sim.channels())
        async with aiohttp.ClientSession() as http:
            async with http.get(relay.http_url + "/readyz") as response:
                assert response.status == 200
            async with http.get(relay.http_url + "/channels") as response:
                listed = {c["channel"]: c for c in await response.json()}
        assert listed["book.BTC-USD"] == {
            "channel": "book.BTC-USD",
            "kind": "book",
            "epoch": sim.epoch,
            "seq": book_seq,
            "live": True,
            "subscribers": 0,
        }
        assert listed["trades.ETH-USD"]["seq"] == sim.seqs["trades.ETH-USD"]

        async with connect(relay.ws_url) as feed:
            await feed.subscribe("book.BTC-USD", request_id="b")
            await feed.subscribe("trades.BTC-USD", request_id="t")
            book = await feed.until("book.BTC-USD", book_seq)
            trades = await feed.until("trades.BTC-USD", sim.seqs["trades.BTC-USD"])
        assert book.book == Book.from_payload(sim.markets[0].book_payload())
        last = sim.markets[0].trade_id
        assert [int(t["id"]) for t in trades.trades] == list(range(last - 4, last + 1))


async def test_not_ready_until_the_source_answers(redis_url: str) -> None:
    unreachable = redis_source("redis://127.0.0.1:1/0")
    async with running_relay(unreachable) as relay, aiohttp.ClientSession() as http:
        async with http.get(relay.http_url + "/readyz") as response:
            assert response.status == 503
            assert (await response.json())["ready"] is False
        async with http.get(relay.http_url + "/healthz") as response:
            assert response.status == 200


async def test_a_fixed_channel_list_serves_only_those_channels(redis_url: str) -> None:
    publisher = RedisPublisher(aioredis.Redis.from_url(redis_url))
    sim = Simulator(publisher, symbols=2, seed=8)
    await sim.start()
    async with running_relay(redis_source(redis_url), channels=("book.ETH-USD",)) as relay:
        await relay.wait_live("book.ETH-USD")
        assert list(relay.relay.hub.channels) == ["book.ETH-USD"]
        async with connect(relay.ws_url) as feed:
            await feed.subscribe("book.BTC-USD", request_id=1)
            assert (await feed.reply())["code"] == "unknown_channel"
            await feed.subscribe("book.ETH-USD", request_id=2)
            assert (await feed.reply())["type"] == "subscribed"
    await publisher.close()
