"""The reader stops when cancelled, even if a library below swallows the cancellation
(seen once in a dozen shutdowns inside redis-py's blocking XREAD)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from relay.config import from_env
from relay.core.entry import StreamEntry
from relay.hub import Hub
from relay.ingest import Ingestor
from relay.metrics import Metrics
from relay.producer import MemoryPublisher, Simulator
from relay.source.memory import MemorySource, MemoryStore


class SwallowingSource(MemorySource):
    """A source whose blocking read eats a cancellation and answers 'nothing new'."""

    swallowed = 0

    async def read(
        self, positions: Mapping[str, str], block_ms: int, count: int
    ) -> list[tuple[str, list[StreamEntry]]]:
        try:
            return await super().read(positions, block_ms, count)
        except asyncio.CancelledError:
            self.swallowed += 1
            return []


async def test_the_reader_stops_when_a_read_swallows_its_cancellation() -> None:
    store = MemoryStore()
    sim = Simulator(MemoryPublisher(store), symbols=1, seed=3)
    await sim.start()
    source = SwallowingSource(store)
    config = from_env({}, read_block_ms=50, discovery_interval=0.05)
    metrics = Metrics()
    hub = Hub(metrics, history=100, trades_kept=10, max_subscriptions=10)
    ingestor = Ingestor(source, hub, config, metrics)
    task = asyncio.create_task(ingestor.run())
    async with asyncio.timeout(10):
        while not ingestor.ready() or not any(ch.live for ch in hub.channels.values()):
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)  # inside a blocking read, most likely
        task.cancel()
        while not task.done():
            await asyncio.sleep(0.01)
    assert task.cancelled()
    assert source.swallowed >= 1  # the case under test did happen
