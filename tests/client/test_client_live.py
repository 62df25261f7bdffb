"""The SDK against a real relay in-process: books and trades equal the producer's, both APIs,
runtime subscriptions, refusals, and a clean close."""

from __future__ import annotations

import asyncio

import pytest
from support.relay import running_relay

from client.harness import (
    Recorder,
    assert_same_as_producer,
    caught_up,
    fast_client,
    memory_market,
)
from relay.client import (
    BookSnapshot,
    BookUpdate,
    ChannelError,
    ChannelStatus,
    Client,
    Connected,
    Event,
    StatusChanged,
    TradesSnapshot,
    TradeUpdate,
)
from relay.producer import Publication, now_us
from relay.redisproc import free_port


async def test_the_iterator_api_keeps_books_and_trades_equal_to_the_producers() -> None:
    market = await memory_market(symbols=2)
    async with running_relay(market.source()) as relay:
        await relay.wait_live(*[c for c in market.channels if c.startswith("book.")])
        seen: list[Event] = []
        lockstep = True

        async def consume(client: Client) -> None:
            nonlocal lockstep
            async for event in client:
                seen.append(event)
                if isinstance(event, BookUpdate):
                    # Nothing moves while the event is held: the book is as of this seq.
                    await asyncio.sleep(0)
                    lockstep = lockstep and event.book.seq == event.seq

        async with fast_client(relay.ws_url, market.channels) as client:
            consumer = asyncio.create_task(consume(client))
            for _ in range(4):
                await market.produce(50)
                await asyncio.sleep(0.05)
            await caught_up(client, market)
            assert_same_as_producer(client, market)
        await asyncio.wait_for(consumer, 5)  # the iterator ends with the client
    assert lockstep
    assert isinstance(seen[0], Connected)
    for name in market.channels:
        mine = [e for e in seen if getattr(e, "channel", None) == name]
        first, snapshot, *updates = mine
        assert first == StatusChanged(
            name, ChannelStatus.LIVE, ChannelStatus.SUBSCRIBING, "snapshot"
        )
        assert isinstance(snapshot, BookSnapshot | TradesSnapshot)
        seqs = [e.seq for e in updates if isinstance(e, BookUpdate | TradeUpdate)]
        assert seqs == list(range(snapshot.seq + 1, market.sim.seqs[name] + 1))
        counters = client.counters(name)  # readable after close, as the last state
        assert counters.gaps == counters.checksum_failures == counters.resubscribes == 0


async def test_the_callback_api_runs_until_a_callback_closes_the_client() -> None:
    market = await memory_market(symbols=1)
    async with running_relay(market.source()) as relay:
        await relay.wait_live("book.BTC-USD")
        client = fast_client(relay.ws_url, ["book.BTC-USD", "trades.BTC-USD"])
        books: list[int] = []
        trades: list[str] = []

        async def on_book(event: BookUpdate) -> None:
            books.append(event.seq)
            if len(books) == 40:
                await client.close()

        client.on(BookUpdate, on_book)
        client.on(TradeUpdate, lambda event: trades.append(event.trade.id))
        running = asyncio.create_task(client.run())
        await asyncio.sleep(0.1)
        for _ in range(60):  # one step at a time: book and trade updates interleave
            await market.produce(1)
            await asyncio.sleep(0.002)
        await asyncio.wait_for(running, 10)
    assert len(books) == 40  # nothing after close()
    assert books == list(range(books[0], books[0] + 40))
    assert trades
    assert trades == [str(n) for n in range(int(trades[0]), int(trades[0]) + len(trades))]
    assert client.status("book.BTC-USD") is ChannelStatus.CLOSED


async def test_a_callback_that_raises_stops_the_client_and_is_raised() -> None:
    market = await memory_market(symbols=1)
    async with running_relay(market.source()) as relay:
        await relay.wait_live("book.BTC-USD")
        client = fast_client(relay.ws_url, ["book.BTC-USD"])

        def explode(event: BookSnapshot) -> None:
            raise RuntimeError("bot bug")

        client.on(BookSnapshot, explode)
        with pytest.raises(RuntimeError, match="bot bug"):
            await asyncio.wait_for(client.run(), 10)
        with pytest.raises(RuntimeError, match="bot bug"):
            async for _ in client:
                pass


async def test_close_cancels_and_awaits_every_task_of_the_client() -> None:
    before = asyncio.all_tasks()
    market = await memory_market(symbols=1)
    # Nothing listens on this port: the client is between attempts when closed.
    lonely = fast_client(f"http://127.0.0.1:{free_port()}/ws", ["book.BTC-USD"])
    async with lonely:
        await asyncio.sleep(0.1)
    assert lonely.stats.connect_failures >= 1
    async with running_relay(market.source()) as relay:
        await relay.wait_live("book.BTC-USD")
        async with fast_client(relay.ws_url, ["book.BTC-USD"]) as client:
            await caught_up(client, market)
            assert {t.get_name() for t in asyncio.all_tasks()} >= {
                "relay-client",
                "relay-client-writer",
            }
        assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("relay-client")]
    assert asyncio.all_tasks() == before


async def test_subscribe_and_unsubscribe_while_running() -> None:
    market = await memory_market(symbols=2)
    async with running_relay(market.source()) as relay:
        await relay.wait_live("book.BTC-USD", "book.ETH-USD")
        recorder = Recorder()
        async with fast_client(relay.ws_url, ["book.BTC-USD"]) as client:
            client.on(Event, recorder)
            await caught_up(client, market)
            client.subscribe("book.ETH-USD")
            client.unsubscribe("book.BTC-USD")
            assert client.status("book.BTC-USD") is ChannelStatus.CLOSED
            assert client.book("book.BTC-USD") is None
            await caught_up(client, market)
            assert client.channels == ["book.ETH-USD"]
            async with asyncio.timeout(5):
                while relay.relay.hub.subscriber_count("book.BTC-USD"):
                    await asyncio.sleep(0.01)
            dropped_at = len(recorder.events)
            await market.produce(20)
            await caught_up(client, market)
            assert_same_as_producer(client, market)
        later = recorder.events[dropped_at:]
        assert not [e for e in later if getattr(e, "channel", None) == "book.BTC-USD"]
        assert recorder.book_seqs_matched


async def test_a_channel_that_does_not_exist_yet_is_taken_once_it_does() -> None:
    market = await memory_market(symbols=1)
    async with running_relay(market.source()) as relay:
        await relay.wait_live("book.BTC-USD")
        recorder = Recorder()
        client = fast_client(relay.ws_url, ["book.NEW-USD"])
        client.on(Event, recorder)
        async with client:
            async with asyncio.timeout(5):
                while not recorder.of(ChannelError):
                    await asyncio.sleep(0.01)
            assert recorder.of(ChannelError)[0].code == "unknown_channel"
            assert client.status("book.NEW-USD") is ChannelStatus.SUBSCRIBING
            book = b'{"bids":[["9.5","1"]],"asks":[["10.5","2"]]}'
            await market.sim.publisher.publish(
                [Publication("book.NEW-USD", 1, now_us(), book, snapshot=book)]
            )
            async with asyncio.timeout(5):
                while client.status("book.NEW-USD") is not ChannelStatus.LIVE:
                    await asyncio.sleep(0.01)
            live = client.book("book.NEW-USD")
            assert live is not None
            assert live.to_payload() == {"bids": [["9.5", "1"]], "asks": [["10.5", "2"]]}


async def test_a_subscription_the_relay_refuses_is_failed_and_said() -> None:
    market = await memory_market(symbols=2)
    async with running_relay(market.source(), max_subscriptions=1) as relay:
        await relay.wait_live("book.BTC-USD", "book.ETH-USD")
        recorder = Recorder()
        client = fast_client(relay.ws_url, ["book.BTC-USD", "book.ETH-USD"])
        client.on(Event, recorder)
        async with client:
            async with asyncio.timeout(5):
                while (client.status("book.ETH-USD"), client.status("book.BTC-USD")) != (
                    ChannelStatus.FAILED,
                    ChannelStatus.LIVE,
                ):
                    await asyncio.sleep(0.01)
        assert client.counters("book.ETH-USD").errors == 1  # still readable after close
        [error] = recorder.of(ChannelError)
        assert (error.channel, error.code) == ("book.ETH-USD", "too_many_subscriptions")
        assert recorder.statuses("book.ETH-USD") == [("failed", "too_many_subscriptions")]
        assert recorder.statuses("book.BTC-USD") == [("live", "snapshot")]
