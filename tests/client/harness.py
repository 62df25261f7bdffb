"""A simulated market feeding an in-process relay, and an SDK client wired for tests."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

import orjson

from relay.client import (
    BookUpdate,
    ChannelStatus,
    Client,
    Event,
    StatusChanged,
)
from relay.core.book import Book
from relay.producer import MemoryPublisher, Publisher, Simulator
from relay.source.base import stream_key
from relay.source.memory import MemorySource, MemoryStore


@dataclass
class Market:
    """A simulator per the contract, stepped by the test: it decides when seqs move."""

    sim: Simulator
    store: MemoryStore | None = None

    @property
    def channels(self) -> list[str]:
        return self.sim.channels()

    async def produce(self, steps: int) -> None:
        for _ in range(steps):
            await self.sim.publisher.publish(self.sim.step())

    def source(self) -> MemorySource:
        assert self.store is not None
        return MemorySource(self.store)

    def book(self, channel: str) -> Book:
        symbol = channel.split(".", 1)[1]
        [market] = [m for m in self.sim.markets if m.instrument.symbol == symbol]
        return Book.from_payload(market.book_payload())

    def trades(self, channel: str) -> list[dict[str, Any]]:
        """Every trade the producer wrote (memory store only), oldest first."""
        assert self.store is not None
        return [
            orjson.loads(e.fields[b"data"]) for e in self.store.stream(stream_key("md:", channel))
        ]


async def memory_market(symbols: int = 2, *, seed: int = 7, warmup: int = 30) -> Market:
    store = MemoryStore()
    # A book snapshot only at seq 1: a relay that starts later holds every update since
    # in its history, so a resume against it replays instead of sending a snapshot.
    sim = Simulator(MemoryPublisher(store), symbols=symbols, seed=seed, snapshot_every=10**6)
    market = Market(sim, store)
    await sim.start()
    await market.produce(warmup)
    return market


async def publisher_market(publisher: Publisher, symbols: int = 2, *, seed: int = 7) -> Market:
    sim = Simulator(publisher, symbols=symbols, seed=seed, snapshot_every=10**6)
    market = Market(sim)
    await sim.start()
    await market.produce(30)
    return market


FAST = {
    "reconnect_base": 0.05,
    "reconnect_max": 0.2,
    "going_away_jitter": 0.05,
    "retry_base": 0.05,
    "retry_max": 0.2,
}


def fast_client(urls: str | list[str], channels: list[str], **options: Any) -> Client:
    return Client(urls, channels, rng=random.Random(5), **{**FAST, **options})


@dataclass
class Recorder:
    """Every event, in order, as a callback sees it (the client's state is exactly as of it)."""

    events: list[Event] = field(default_factory=list)
    book_seqs_matched: bool = True  # every BookUpdate's book was at the update's seq

    def __call__(self, event: Event) -> None:
        if isinstance(event, BookUpdate) and event.book.seq != event.seq:
            self.book_seqs_matched = False
        self.events.append(event)

    def of(self, kind: type[Event]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    def statuses(self, channel: str) -> list[tuple[str, str]]:
        return [
            (e.status.value, e.reason)
            for e in self.events
            if isinstance(e, StatusChanged) and e.channel == channel
        ]


async def caught_up(client: Client, market: Market, timeout: float = 10.0) -> None:
    """Until every channel of the client is live at the producer's last seq."""

    def done() -> bool:
        for name in client.channels:
            position = client.position(name)
            if client.status(name) is not ChannelStatus.LIVE or position is None:
                return False
            if position != (market.sim.epoch, market.sim.seqs[name]):
                return False
        return True

    async with asyncio.timeout(timeout):
        while not done():
            await asyncio.sleep(0.01)


def assert_same_as_producer(client: Client, market: Market) -> None:
    for name in client.channels:
        if name.startswith("book."):
            book = client.book(name)
            assert book is not None
            assert book.to_book() == market.book(name), name
        elif market.store is not None:
            kept = [t.data for t in client.trades(name)]
            assert kept, name
            assert kept == market.trades(name)[-len(kept) :], name
