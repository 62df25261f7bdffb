"""A well-behaved producer per the contract, writing simulated markets to a store.

For each symbol it owns ``book.<symbol>`` and ``trades.<symbol>``. On start it opens a
new epoch: the old streams go, the meta hash gets the epoch, and entry seq 1 of each book
carries the whole book, with the snapshot hash pointing at it. Then every step is one
diff (and maybe one trade) with seq + 1. Every ``snapshot_every`` book updates the
snapshot hash is rewritten atomically with the XADD it belongs to. Streams are trimmed
with MAXLEN ~.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import orjson
import redis.asyncio as aioredis
from opentelemetry.trace import TracerProvider
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from relay import telemetry
from relay.backoff import Backoff
from relay.market import Market, instruments
from relay.source.base import SourceUnavailable, meta_key, snapshot_key, stream_key
from relay.source.memory import MemoryStore
from relay.source.redis import guard

log = logging.getLogger("relay.producer")


@dataclass(frozen=True, slots=True)
class Publication:
    channel: str
    seq: int
    ts: int
    data: bytes
    snapshot: bytes | None = None  # the book at this seq, written atomically with it
    traceparent: bytes | None = None  # W3C trace context of the span that published it


def traced(items: Sequence[Publication], traceparent: bytes | None) -> list[Publication]:
    """``items`` carrying ``traceparent`` (unchanged when it is None)."""
    if traceparent is None:
        return list(items)
    return [replace(item, traceparent=traceparent) for item in items]


class Publisher(Protocol):
    async def reset(self, channels: Sequence[str], epoch: str) -> None: ...

    async def publish(self, items: Sequence[Publication]) -> None: ...

    async def last_seqs(self, channels: Sequence[str]) -> dict[str, int]:
        """The seq of each channel's last entry (0 for an empty or missing stream)."""
        ...

    async def close(self) -> None: ...


def _fields(item: Publication) -> dict[bytes, bytes]:
    fields = {b"seq": b"%d" % item.seq, b"ts": b"%d" % item.ts, b"data": item.data}
    if item.traceparent is not None:
        fields[b"traceparent"] = item.traceparent
    return fields


# XADD and the snapshot hash that points at the new entry, in one atomic step: the id is
# only known inside the server, so MULTI cannot do it.
_XADD_WITH_SNAPSHOT = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
                      'seq', ARGV[2], 'ts', ARGV[3], 'data', ARGV[4])
redis.call('HSET', KEYS[2], 'seq', ARGV[2], 'ts', ARGV[3], 'data', ARGV[5], 'id', id)
return id
"""
# The same with the optional contract field traceparent (ARGV[6]) on the entry.
_XADD_WITH_SNAPSHOT_TRACED = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
                      'seq', ARGV[2], 'ts', ARGV[3], 'data', ARGV[4], 'traceparent', ARGV[6])
redis.call('HSET', KEYS[2], 'seq', ARGV[2], 'ts', ARGV[3], 'data', ARGV[5], 'id', id)
return id
"""


class RedisPublisher:
    def __init__(self, client: aioredis.Redis, prefix: str = "md:", maxlen: int = 10_000) -> None:
        self.client = client
        self.prefix = prefix
        self.maxlen = maxlen
        self._script = client.register_script(_XADD_WITH_SNAPSHOT)
        self._traced_script = client.register_script(_XADD_WITH_SNAPSHOT_TRACED)
        self._cluster = isinstance(client, RedisCluster)

    async def reset(self, channels: Sequence[str], epoch: str) -> None:
        async def run() -> None:
            pipe = self.client.pipeline(transaction=False)
            for channel in channels:
                keys = (stream_key(self.prefix, channel), snapshot_key(self.prefix, channel))
                pipe.delete(*keys)
                pipe.hset(meta_key(self.prefix, channel), "epoch", epoch)
            await pipe.execute()

        await guard(run)

    async def publish(self, items: Sequence[Publication]) -> None:
        async def run() -> None:
            pipe = self.client.pipeline(transaction=False)
            for item in items:
                if item.snapshot is None:
                    stream = stream_key(self.prefix, item.channel)
                    pipe.xadd(stream, _fields(item), maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]
                elif self._cluster:
                    # A cluster pipeline refuses scripts: send what precedes, then the
                    # script alone, so the stream keeps the order of the items.
                    await pipe.execute()
                    pipe = self.client.pipeline(transaction=False)
                    await self._xadd_with_snapshot(item, self.client)
                else:
                    await self._xadd_with_snapshot(item, pipe)
            await pipe.execute()

        await guard(run)

    async def _xadd_with_snapshot(self, item: Publication, client: Any) -> None:
        keys = [stream_key(self.prefix, item.channel), snapshot_key(self.prefix, item.channel)]
        args: list[Any] = [self.maxlen, item.seq, item.ts, item.data, item.snapshot]
        if item.traceparent is None:
            await self._script(keys=keys, args=args, client=client)
        else:
            await self._traced_script(keys=keys, args=[*args, item.traceparent], client=client)

    async def last_seqs(self, channels: Sequence[str]) -> dict[str, int]:
        async def run() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for channel in channels:
                pipe.xrevrange(stream_key(self.prefix, channel), count=1)
            return list(await pipe.execute())

        replies = await guard(run)
        return {
            channel: int(reply[0][1][b"seq"]) if reply else 0
            for channel, reply in zip(channels, replies, strict=True)
        }

    async def close(self) -> None:
        await self.client.aclose()


def redis_publisher(url: str, prefix: str = "md:", maxlen: int = 10_000) -> RedisPublisher:
    """A publisher for a Redis URL, or for a Redis Cluster with ``redis+cluster://``."""
    from relay.source.cluster import is_cluster_url

    if is_cluster_url(url):
        cluster = RedisCluster.from_url(
            url.replace("+cluster", "", 1), socket_connect_timeout=2.0, socket_timeout=5.0
        )
        return RedisPublisher(cluster, prefix, maxlen)  # type: ignore[arg-type]
    return RedisPublisher(connect_publisher(url), prefix, maxlen)


def connect_publisher(url: str) -> aioredis.Redis:
    """A Redis client for a publisher. redis-py's own retries are off: a command that
    fails on a connection the server dropped (it restarted, maybe empty) must reach the
    Simulator, which checks what the store still holds before writing on."""
    return aioredis.Redis.from_url(
        url, socket_connect_timeout=2.0, socket_timeout=5.0, retry=Retry(NoBackoff(), 0)
    )


class MemoryPublisher:
    def __init__(self, store: MemoryStore, prefix: str = "md:", maxlen: int = 10_000) -> None:
        self.store = store
        self.prefix = prefix
        self.maxlen = maxlen

    async def reset(self, channels: Sequence[str], epoch: str) -> None:
        for channel in channels:
            self.store.delete(stream_key(self.prefix, channel), snapshot_key(self.prefix, channel))
            self.store.hset(meta_key(self.prefix, channel), {b"epoch": epoch.encode()})

    async def publish(self, items: Sequence[Publication]) -> None:
        for item in items:
            entry_id = self.store.xadd(
                stream_key(self.prefix, item.channel), _fields(item), self.maxlen
            )
            if item.snapshot is not None:
                self.store.hset(
                    snapshot_key(self.prefix, item.channel),
                    {
                        b"seq": b"%d" % item.seq,
                        b"ts": b"%d" % item.ts,
                        b"data": item.snapshot,
                        b"id": entry_id.encode(),
                    },
                )

    async def last_seqs(self, channels: Sequence[str]) -> dict[str, int]:
        result = {}
        for channel in channels:
            entries = self.store.stream(stream_key(self.prefix, channel))
            result[channel] = int(entries[-1].fields[b"seq"]) if entries else 0
        return result

    async def close(self) -> None:
        return None


def now_us() -> int:
    return time.time_ns() // 1000


def _new_epoch() -> str:
    return f"{int(time.time())}-{secrets.token_hex(3)}"


class Simulator:
    """Drives ``Market``s at ``rate`` book updates per second per symbol."""

    def __init__(
        self,
        publisher: Publisher,
        *,
        symbols: int = 3,
        rate: float = 20.0,
        snapshot_every: int = 100,
        depth: int = 200,
        seed: int | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        rng = random.Random(seed)
        self.publisher = publisher
        # One relay.publish span per write; its traceparent goes on the entries (sampled).
        self._tracer = telemetry.producer_tracer(tracer_provider, "relay-simulate")
        self.rate = rate
        self.snapshot_every = snapshot_every
        self.markets = [
            Market(inst, random.Random(rng.random()), depth) for inst in instruments(symbols)
        ]
        self.epoch = _new_epoch()
        self.seqs: dict[str, int] = {}
        self.updates = 0
        self.epochs_opened = 0  # new epochs after start(): the store lost what it held
        self._max_batch = max(1, int(rate))

    def channels(self) -> list[str]:
        return [
            f"{kind}.{m.instrument.symbol}" for m in self.markets for kind in ("book", "trades")
        ]

    async def start(self) -> None:
        """Open a new epoch: seq 1 of every book is the whole book, and its snapshot."""
        await self.publisher.reset(self.channels(), self.epoch)
        items = []
        for market in self.markets:
            channel = f"book.{market.instrument.symbol}"
            book = orjson.dumps(market.book_payload())
            items.append(Publication(channel, 1, now_us(), book, snapshot=book))
            self.seqs[channel] = 1
            self.seqs[f"trades.{market.instrument.symbol}"] = 0
        with telemetry.publish_span(self._tracer, len(items)) as parent:
            await self.publisher.publish(traced(items, parent))

    def step(self) -> list[Publication]:
        """One event per market; the seq of each channel moves by exactly one per entry."""
        items = []
        for market in self.markets:
            symbol = market.instrument.symbol
            diff, trade = market.step()
            ts = now_us()
            if trade is not None:
                items.append(self._next(f"trades.{symbol}", ts, orjson.dumps(trade)))
            book = f"book.{symbol}"
            item = self._next(book, ts, orjson.dumps(diff))
            if item.seq % self.snapshot_every == 0:
                item = Publication(
                    item.channel, item.seq, ts, item.data, orjson.dumps(market.book_payload())
                )
            items.append(item)
        self.updates += 1
        return items

    def _next(self, channel: str, ts: int, data: bytes) -> Publication:
        seq = self.seqs[channel] = self.seqs[channel] + 1
        return Publication(channel, seq, ts, data)

    async def _unwritten(self, batch: list[Publication]) -> list[Publication] | None:
        """What of ``batch`` the store does not hold yet; None when the store lost entries
        written before the batch (a Redis restarted without persistence, or that lost its
        last second of AOF in a crash): those seqs cannot be written again."""
        while True:
            try:
                written = await self.publisher.last_seqs(sorted({i.channel for i in batch}))
            except SourceUnavailable:
                await asyncio.sleep(0.5)
                continue
            first: dict[str, int] = {}
            for item in batch:
                first.setdefault(item.channel, item.seq)
            if any(written[channel] < seq - 1 for channel, seq in first.items()):
                return None
            return [item for item in batch if item.seq > written[item.channel]]

    async def _reopen(self, backoff: Backoff) -> None:
        """Start a new epoch from the markets as they are now (contract: the producer
        changes the epoch whenever it restarts a channel's numbering)."""
        old, self.epoch = self.epoch, _new_epoch()
        self.epochs_opened += 1
        log.warning("the store lost entries: new epoch", extra={"old": old, "epoch": self.epoch})
        while True:
            try:
                await self.start()
                backoff.reset()
                return
            except SourceUnavailable as exc:
                delay = backoff.next_delay()
                log.warning(
                    "new epoch failed, retrying",
                    extra={"error": str(exc), "retry_in": round(delay, 3)},
                )
                await asyncio.sleep(delay)

    async def run(
        self, *, steps: int | None = None, tick: float = 0.01, stop: asyncio.Event | None = None
    ) -> None:
        """Publish at the configured rate until cancelled, ``stop`` is set, or ``steps``
        steps are out. ``stop`` ends the run between two writes, never inside one.

        A failed write is retried with backoff before the market moves on, so a Redis
        outage delays the feed but never makes a seq gap. A pipeline that failed may have
        been partly applied (the connection died after the server ran some commands), so
        a retry first drops what the streams already hold: no seq is written twice. A
        store that lost entries it had acknowledged gets a new epoch (seq 1: the whole
        book), since those entries cannot be written again.
        """
        backoff = Backoff(0.05, 2.0)
        started = time.monotonic()
        done = 0
        while (steps is None or done < steps) and not (stop is not None and stop.is_set()):
            due = int((time.monotonic() - started) * self.rate) - done
            if due > self._max_batch:
                # Far behind (a long outage, a stalled loop): drop the backlog of time
                # rather than burst; the market just moves on from now.
                started += (due - self._max_batch) / self.rate
                due = self._max_batch
            if steps is not None:
                due = min(due, steps - done)
            if due <= 0:
                await asyncio.sleep(tick)
                continue
            batch = [item for _ in range(due) for item in self.step()]
            with telemetry.publish_span(self._tracer, len(batch)) as parent:
                batch = traced(batch, parent)
                while True:
                    try:
                        await self.publisher.publish(batch)
                        backoff.reset()
                        break
                    except SourceUnavailable as exc:
                        delay = backoff.next_delay()
                        log.warning(
                            "publish failed, retrying",
                            extra={"error": str(exc), "retry_in": round(delay, 3)},
                        )
                        await asyncio.sleep(delay)
                        unwritten = await self._unwritten(batch)
                        if unwritten is None:
                            await self._reopen(backoff)
                            break
                        batch = unwritten
            done += due
