"""The fault-injection stack: a private redis-server, `relay serve` processes, a simulated
producer, and watched clients that check every frame.

The relay runs as a subprocess so that its own CPU time can be read from /proc during an
outage (a busy loop shows there, whatever the metrics say) and so that it can be killed.
The clients are ``support.client.Feed``s, read by one task each: a gap, a duplicate or a
checksum mismatch anywhere is recorded, and at the end every book must equal the
producer's book at its last seq, in its current epoch.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families
from support.client import ChannelView, Feed
from support.relay import stop_producing, wait_ready

from relay.core.book import Book
from relay.producer import RedisPublisher, Simulator, connect_publisher
from relay.redisproc import free_port

# The knobs of support.relay.FAST, for a relay process.
FAST_ENV = {
    "RELAY_READ_BLOCK_MS": "100",
    "RELAY_DISCOVERY_INTERVAL": "0.2",
    "RELAY_BACKOFF_BASE": "0.05",
    "RELAY_BACKOFF_MAX": "0.5",
    "RELAY_PAGE": "0",
}
# A relay whose Redis is gone must not spin: its CPU over an outage, as a share of one
# core. Generous: an idle relay with a few clients uses about 1%; a busy loop uses 100%.
CPU_BOUND = 0.3
_CLK_TCK = os.sysconf("SC_CLK_TCK")


class RelayProcess:
    """One `relay serve` process on a free port; its output goes to a log file."""

    def __init__(self, redis_url: str, log_dir: Path, **env: str) -> None:
        self.port = free_port()
        self.log_path = log_dir / f"relay-{self.port}.log"
        self._env = {**os.environ, **FAST_ENV, "RELAY_REDIS_URL": redis_url, **env}
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def ws_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ws"

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "relay.cli", "serve", "--host", "127.0.0.1",
                 "--port", str(self.port)],
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

    async def ready(self) -> None:
        await wait_ready(self.port)

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{self.port}/metrics") as response,
        ):
            text = await response.text()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    async def metric(self, name: str, **labels: str) -> float:
        return (await self.metrics()).get((name, tuple(sorted(labels.items()))), 0.0)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        assert self._proc is not None
        self._proc.kill()
        self._proc.wait()

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


class CpuWindow:
    """CPU share of one core a process used between ``__init__`` and ``share()``."""

    def __init__(self, relay: RelayProcess) -> None:
        self.relay = relay
        self.cpu = relay.cpu_seconds()
        self.wall = time.monotonic()

    def share(self) -> float:
        return (self.relay.cpu_seconds() - self.cpu) / (time.monotonic() - self.wall)


class Producer:
    """``Simulator`` writing through a ``RedisPublisher``, as ``relay simulate`` does."""

    def __init__(
        self, url: str, *, rate: float = 100.0, snapshot_every: int = 50, seed: int = 1
    ) -> None:
        self.publisher = RedisPublisher(connect_publisher(url), maxlen=100_000)
        self.sim = Simulator(
            self.publisher, symbols=1, rate=rate, snapshot_every=snapshot_every, seed=seed
        )
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def channels(self) -> list[str]:
        return self.sim.channels()

    async def start(self) -> None:
        await self.sim.start()
        self._task = asyncio.create_task(self.sim.run(stop=self._stop))

    async def stop(self) -> None:
        if self._task is not None:
            await stop_producing(self._task, self._stop)
            self._task = None

    async def close(self) -> None:
        await self.stop()
        await self.publisher.close()

    def book(self, channel: str) -> Book:
        symbol = channel.split(".", 1)[1]
        market = next(m for m in self.sim.markets if m.instrument.symbol == symbol)
        return Book.from_payload(market.book_payload())


@dataclass
class Watched:
    """A client reading every frame in the background; ``arrivals`` stamps data frames."""

    feed: Feed
    arrivals: list[float] = field(default_factory=list)
    snapshots: list[tuple[float, str]] = field(default_factory=list)  # (time, channel)
    error: BaseException | None = None
    task: asyncio.Task[None] | None = None

    async def _read(self) -> None:
        try:
            while True:
                frame = await self.feed.receive(timeout=60)
                if frame["type"] in {"snapshot", "update"}:
                    self.arrivals.append(time.monotonic())
                if frame["type"] == "snapshot":
                    self.snapshots.append((time.monotonic(), frame["channel"]))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.error = exc

    def first_after(self, moment: float) -> float | None:
        return next((t for t in self.arrivals if t > moment), None)


@contextlib.asynccontextmanager
async def watched_clients(
    url: str, channels: Sequence[str], count: int
) -> AsyncIterator[list[Watched]]:
    """``count`` clients subscribed to ``channels``, each read by its own task."""
    async with aiohttp.ClientSession() as http, contextlib.AsyncExitStack() as stack:
        clients = []
        for _ in range(count):
            ws = await stack.enter_async_context(http.ws_connect(url))
            watched = Watched(Feed(ws))
            for number, channel in enumerate(channels, 1):
                await watched.feed.subscribe(channel, request_id=number)
            watched.task = asyncio.create_task(watched._read())
            clients.append(watched)
        try:
            yield clients
        finally:
            for watched in clients:
                assert watched.task is not None
                watched.task.cancel()
            await asyncio.gather(*(w.task for w in clients if w.task), return_exceptions=True)


async def wait_for(predicate: Any, timeout: float, what: str) -> None:
    """Poll ``predicate()`` until true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


async def wait_updates(clients: Sequence[Watched], after: float, timeout: float) -> float:
    """Until every client got a data frame after ``after``; returns the time it took."""
    await wait_for(
        lambda: all(c.first_after(after) is not None for c in clients), timeout, "updates again"
    )
    return max(c.first_after(after) or after for c in clients) - after


async def settle(producer: Producer, clients: Sequence[Watched], timeout: float = 20.0) -> None:
    """Stop the producer; wait until every client holds its last seq in its epoch."""
    await producer.stop()
    sim = producer.sim

    def caught_up() -> bool:
        for client in clients:
            if client.error is not None:
                raise AssertionError(f"client failed: {client.error!r}")
            for channel in producer.channels:
                view = client.feed.views.get(channel)
                if view is None or view.epoch != sim.epoch or view.seq != sim.seqs[channel]:
                    return False
        return True

    await wait_for(caught_up, timeout, f"clients at the producer's seqs {sim.seqs}")


def check(producer: Producer, clients: Sequence[Watched]) -> int:
    """Zero silent gaps: every update was the next seq or followed a fresh snapshot, no
    checksum failed, and every book equals the producer's. Returns the snapshots each
    client got beyond its first one per channel (the most over clients)."""
    extra = 0
    for client in clients:
        for channel in producer.channels:
            view: ChannelView = client.feed.views[channel]
            assert view.gaps == [], f"{channel}: silent gaps (expected, got) {view.gaps}"
            assert view.checksum_failures == [], f"{channel}: checksums {view.checksum_failures}"
            if channel.startswith("book."):
                assert view.book == producer.book(channel), f"{channel}: book differs"
            extra = max(extra, view.snapshots - 1)
    return extra


@dataclass
class Outcome:
    fault: str
    lost: int
    snapshots: int
    recovery: float
    cpu: float | None = None
    errors: float = 0.0  # Redis errors the relay counted

    def report(self) -> None:
        """One line per fault (run with -s to see them): the figures of docs/faults.md."""
        cpu = "" if self.cpu is None else f" relay_cpu={self.cpu:.1%}"
        errors = f" redis_errors={self.errors:.0f}"
        print(
            f"\nFAULT {self.fault}: lost={self.lost} extra_snapshots={self.snapshots} "
            f"recovery={self.recovery:.2f}s{cpu}{errors}",
            flush=True,
        )


async def commandstats(url: str) -> dict[str, int]:
    """Calls per command since the server started (INFO commandstats)."""
    client = aioredis.Redis.from_url(url)
    try:
        info = await client.info("commandstats")
    finally:
        await client.aclose()
    return {name.removeprefix("cmdstat_"): int(stats["calls"]) for name, stats in info.items()}
