"""Bad input and limits (contract rules 5 and 6): an error with a stable code, the connection
stays open, and other clients are not disturbed. Runs on the in-memory source."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
from support.client import Feed, connect
from support.relay import RunningRelay, running_relay

from relay.producer import MemoryPublisher, Simulator
from relay.source.memory import MemorySource, MemoryStore


@pytest.fixture
async def relay() -> AsyncIterator[RunningRelay]:
    store = MemoryStore()
    publisher = MemoryPublisher(store)
    sim = Simulator(publisher, symbols=2, seed=1)
    await sim.start()
    for _ in range(30):
        await publisher.publish(sim.step())
    async with running_relay(
        MemorySource(store), max_subscriptions=3, rate_limit=5.0, rate_burst=10.0, rate_strikes=5
    ) as running:
        await running.wait_live(*sim.channels())
        yield running


async def _error(feed: Feed) -> dict[str, object]:
    reply = await feed.reply()
    assert reply["type"] == "error", reply
    return reply


async def _still_open(feed: Feed) -> None:
    await feed.send({"op": "ping", "id": "alive"})
    assert await feed.reply() == {"type": "pong", "id": "alive"}


@pytest.mark.parametrize(
    ("frame", "code", "request_id"),
    [
        ("not json", "invalid_json", None),
        ("[1, 2]", "invalid_json", None),
        ('{"op": "dance", "id": 7}', "unknown_op", 7),
        ('{"id": 8}', "unknown_op", 8),
        ('{"op": "subscribe", "id": 9}', "invalid_channel", 9),
        ('{"op": "subscribe", "channel": 5, "id": 10}', "invalid_channel", 10),
        ('{"op": "subscribe", "channel": "book.BTC/USD", "id": 11}', "invalid_channel", 11),
        ('{"op": "subscribe", "channel": "candles.BTC-USD", "id": 12}', "invalid_channel", 12),
        ('{"op": "subscribe", "channel": "book.XYZ-USD", "id": 13}', "unknown_channel", 13),
        ('{"op": "subscribe", "channel": "book.BTC-USD", "id": true}', "invalid_id", None),
        ('{"op": "subscribe", "channel": "book.BTC-USD", "id": 1.5}', "invalid_id", None),
        ('{"op": "ping", "id": {"a": 1}}', "invalid_id", None),
        (
            '{"op": "subscribe", "channel": "book.BTC-USD", "id": 14, "resume": {"seq": 3}}',
            "invalid_resume",
            14,
        ),
        ('{"op": "unsubscribe", "channel": "book.BTC-USD", "id": 15}', "not_subscribed", 15),
    ],
)
async def test_bad_requests_get_an_error_code_and_the_connection_stays(
    relay: RunningRelay, frame: str, code: str, request_id: object
) -> None:
    async with connect(relay.ws_url) as feed:
        await feed.ws.send_str(frame)
        error = await _error(feed)
        assert error["code"] == code
        assert error.get("id") == request_id
        assert isinstance(error["message"], str)
        assert error["message"]
        await _still_open(feed)
    assert relay.metric("relay_client_errors_total", {"code": code}) == 1


async def test_binary_frames_are_refused_with_a_code(relay: RunningRelay) -> None:
    async with connect(relay.ws_url) as feed:
        await feed.ws.send_bytes(b'{"op": "ping"}')
        assert (await _error(feed))["code"] == "binary_not_supported"
        await _still_open(feed)


async def test_subscribe_twice_and_unsubscribe(relay: RunningRelay) -> None:
    async with connect(relay.ws_url) as feed:
        await feed.subscribe("book.BTC-USD", request_id=1)
        assert (await feed.reply())["type"] == "subscribed"
        await feed.subscribe("book.BTC-USD", request_id=2)
        assert await _error(feed) == {
            "type": "error",
            "id": 2,
            "code": "already_subscribed",
            "message": "already subscribed to book.BTC-USD",
        }
        await feed.send({"op": "unsubscribe", "channel": "book.BTC-USD", "id": 3})
        assert await feed.reply() == {"type": "unsubscribed", "id": 3, "channel": "book.BTC-USD"}
        assert relay.relay.hub.subscriber_count("book.BTC-USD") == 0


async def test_subscriptions_per_connection_are_capped(relay: RunningRelay) -> None:
    async with connect(relay.ws_url) as feed:
        for n, channel in enumerate(["book.BTC-USD", "book.ETH-USD", "trades.BTC-USD"]):
            await feed.subscribe(channel, request_id=n)
            assert (await feed.reply())["type"] == "subscribed"
        await feed.subscribe("trades.ETH-USD", request_id=9)
        error = await _error(feed)
        assert (error["code"], error["id"]) == ("too_many_subscriptions", 9)
        await _still_open(feed)


async def test_a_frame_over_the_limit_closes_with_1009(relay: RunningRelay) -> None:
    async with connect(relay.ws_url) as feed:
        await feed.ws.send_str(
            '{"op": "ping", "pad": "' + "x" * relay.config.max_frame_bytes + '"}'
        )
        message = await feed.ws.receive(timeout=5)
        assert message.type is aiohttp.WSMsgType.CLOSE
        assert message.data == 1009


async def test_a_flood_is_rate_limited_then_closed_with_1008(relay: RunningRelay) -> None:
    async with connect(relay.ws_url) as flooder, connect(relay.ws_url) as bystander:
        await bystander.subscribe("book.BTC-USD", request_id=1)
        assert (await bystander.reply())["type"] == "subscribed"
        burst = int(relay.config.rate_burst)
        for n in range(burst + relay.config.rate_strikes + 5):
            await flooder.send({"op": "ping", "id": n})
        codes: list[str] = []
        while True:
            message = await flooder.ws.receive(timeout=5)
            if message.type is not aiohttp.WSMsgType.TEXT:
                break
            frame = orjson.loads(message.data)
            codes.append(frame.get("code", frame["type"]))
        assert message.type is aiohttp.WSMsgType.CLOSE
        assert message.data == 1008
        assert codes[:burst] == ["pong"] * burst
        assert codes[burst:] == ["rate_limited"] * relay.config.rate_strikes
        await _still_open(bystander)


async def test_a_client_that_stops_answering_pings_is_dropped(relay: RunningRelay) -> None:
    async with running_relay(relay.relay.source, ping_interval=0.2) as quick:
        # autoping=False: the client never answers the relay's pings
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(quick.ws_url, autoping=False) as ws,
        ):
            async with asyncio.timeout(5):
                while True:
                    message = await ws.receive()
                    if message.type in {aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED}:
                        break
        async with asyncio.timeout(5):
            while quick.relay.connections:
                await asyncio.sleep(0.02)
        assert quick.metric("relay_connections_accepted_total") == 1
