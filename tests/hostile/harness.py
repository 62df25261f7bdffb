"""A stage for hostile-client tests: a producer writing book updates, a relay on the
in-memory source, and a control client that must stay gapless and keep getting its
updates whatever the hostile client does (issue #6, "Hostile clients").

The control client reads continuously in a task of its own; ``assert_control_healthy``
checks it reached the producer's seq (a generous deadline: delivery is bounded, not
timed), saw every seq exactly once after its one snapshot, and verified the checksums.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from support.client import Feed, connect
from support.relay import RunningRelay, running_relay, stop_producing

from relay.producer import MemoryPublisher, Simulator
from relay.source.memory import MemorySource, MemoryStore

BOOK = "book.BTC-USD"
TRADES = "trades.BTC-USD"


@dataclass
class Stage:
    relay: RunningRelay
    sim: Simulator
    control: Feed
    reader: asyncio.Task[None]
    started_at: int  # the producer's seq when the control client subscribed

    @property
    def host(self) -> str:
        return self.relay.config.host

    @property
    def port(self) -> int:
        return self.relay.config.port

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.relay.metric(name, labels)

    async def assert_control_healthy(self, timeout: float = 15.0) -> None:
        """The control client got everything the producer wrote so far, gapless, and at
        least 20 updates since it subscribed."""
        await poll(lambda: self.sim.seqs[BOOK] >= self.started_at + 20, timeout)
        target = self.sim.seqs[BOOK]
        assert not self.reader.done(), self.reader
        await poll(lambda: _seq(self.control) >= target, timeout)
        view = self.control.views[BOOK]
        assert view.gaps == []
        assert view.snapshots == 1  # never resnapshotted: nothing went wrong for it
        assert view.checksum_failures == []
        assert view.updates == list(range(view.updates[0], view.updates[-1] + 1))
        assert not self.control.ws.closed


def _seq(feed: Feed) -> int:
    view = feed.views.get(BOOK)
    return view.seq if view is not None and view.seq is not None else -1


async def poll(check: Callable[[], bool], timeout: float = 10.0, every: float = 0.02) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(every)


async def _read_forever(feed: Feed) -> None:
    while True:
        await feed.receive(timeout=60)


@contextlib.asynccontextmanager
async def stage(**overrides: Any) -> AsyncIterator[Stage]:
    """The relay (``overrides`` are knobs) with a producer at 200 updates/s running and the
    control client subscribed to ``BOOK`` and reading."""
    store = MemoryStore()
    sim = Simulator(MemoryPublisher(store), symbols=1, seed=11, rate=200.0, depth=50)
    await sim.start()
    await sim.run(steps=20)
    async with running_relay(MemorySource(store), **overrides) as relay:
        await relay.wait_live(BOOK)
        async with connect(relay.ws_url) as control:
            await control.subscribe(BOOK, request_id="control")
            assert (await control.reply())["type"] == "subscribed"
            reader = asyncio.create_task(_read_forever(control), name="control-reader")
            stop = asyncio.Event()
            producer = asyncio.create_task(sim.run(stop=stop), name="producer")
            try:
                yield Stage(relay, sim, control, reader, sim.seqs[BOOK])
            finally:
                await stop_producing(producer, stop)
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                    await reader
