"""The in-memory source keeps the Redis semantics the relay relies on: the whole relay
runs on it, as `relay demo` does where no redis-server exists."""

from __future__ import annotations

import asyncio

from support.client import connect
from support.relay import running_relay

from relay.core.book import Book
from relay.producer import MemoryPublisher, Simulator
from relay.source.memory import MemorySource, MemoryStore


async def test_simulator_and_relay_in_one_process_on_the_memory_source() -> None:
    store = MemoryStore()
    publisher = MemoryPublisher(store, maxlen=500)
    sim = Simulator(publisher, symbols=3, seed=4, rate=400.0, snapshot_every=25)
    await sim.start()
    async with running_relay(MemorySource(store)) as relay:
        await relay.wait_live("book.BTC-USD", "book.ETH-USD", "book.SOL-USD")
        producing = asyncio.create_task(sim.run(steps=400))
        async with connect(relay.ws_url) as early:
            await early.subscribe("book.ETH-USD")
            await asyncio.sleep(0.3)
            async with connect(relay.ws_url) as late:
                await late.subscribe("book.ETH-USD")
                await producing
                final = sim.seqs["book.ETH-USD"]
                for feed in (early, late):
                    view = await feed.until("book.ETH-USD", final)
                    assert view.gaps == []
                    assert view.book == Book.from_payload(sim.markets[1].book_payload())


async def test_memory_reads_block_until_an_entry_arrives() -> None:
    store = MemoryStore()
    source = MemorySource(store)
    publisher = MemoryPublisher(store)
    sim = Simulator(publisher, symbols=1, seed=2)
    await sim.start()
    last = (await source.last_entries("book.BTC-USD", 1))[0].id
    reader = asyncio.create_task(source.read({"book.BTC-USD": last}, 5000, 10))
    await asyncio.sleep(0.05)
    assert not reader.done()
    await publisher.publish(sim.step())
    batch = await asyncio.wait_for(reader, 1)
    assert [(name, [e.fields[b"seq"] for e in entries]) for name, entries in batch] == [
        ("book.BTC-USD", [b"2"])
    ]
    assert await source.read({"book.BTC-USD": batch[0][1][-1].id}, 50, 10) == []
