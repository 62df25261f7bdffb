"""The product's source: Redis Streams through redis-py's asyncio client (hiredis parser).

RESP2 is pinned so that XREAD answers a list (``[]`` on timeout) whatever the server
default. redis-py's own retries are turned off: the ingest loop owns retrying, with
capped jittered backoff, so that a dead Redis is seen and counted in one place.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    ReadOnlyError,
    RedisClusterException,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from relay.core.entry import StreamEntry
from relay.source.base import (
    Snapshot,
    SourceUnavailable,
    channel_of_key,
    meta_key,
    snapshot_from_fields,
    snapshot_key,
    stream_key,
)

T = TypeVar("T")

_TRANSIENT = (
    RedisConnectionError,
    RedisTimeoutError,
    BusyLoadingError,
    ReadOnlyError,
    TryAgainError,
    ClusterDownError,
    SlotNotCoveredError,
    RedisClusterException,
    OSError,
)
_TRANSIENT_REPLIES = ("LOADING", "MASTERDOWN", "CLUSTERDOWN", "UNBLOCKED")


def connect(url: str, *, read_timeout: float) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        url,
        decode_responses=False,
        protocol=2,
        socket_connect_timeout=2.0,
        # Above the XREAD block time: a paused or wedged server is detected, not waited on.
        socket_timeout=read_timeout,
        retry=Retry(NoBackoff(), 0),
    )


async def guard(call: Callable[[], Awaitable[T]]) -> T:
    """Run a Redis call; transient failures become SourceUnavailable (retry later)."""
    try:
        return await call()
    except _TRANSIENT as exc:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # redis-py can turn the cancellation of a command in flight into a connection
            # error; retrying that would swallow the cancellation (a task that never ends).
            raise asyncio.CancelledError from exc
        raise SourceUnavailable(f"{type(exc).__name__}: {exc}") from exc
    except ResponseError as exc:
        # UNBLOCKED: a blocked XREAD ended by a role change (a master made a replica in a
        # failover): the read is simply retried, from the same ids.
        if str(exc).startswith(_TRANSIENT_REPLIES):
            raise SourceUnavailable(f"{type(exc).__name__}: {exc}") from exc
        raise


def entries_of(raw: Sequence[Any]) -> list[StreamEntry]:
    return [StreamEntry(entry_id.decode(), fields) for entry_id, fields in raw]


def _raw_reply(response: Any, **options: Any) -> Any:
    return response


def entries_of_reply(raw: Sequence[Any]) -> list[StreamEntry]:
    """Entries of a raw XREAD reply: ``[id, [field, value, ...]]`` each."""
    return [
        StreamEntry(entry_id.decode(), dict(zip(flat[::2], flat[1::2], strict=True)))
        for entry_id, flat in raw
    ]


class RedisSource:
    def __init__(self, client: aioredis.Redis, prefix: str = "md:") -> None:
        # redis-py's stubs type replies as unions of every RESP shape; with RESP2 and
        # decode_responses=False the shapes are known, so replies are taken as Any.
        self.client: Any = client
        self.prefix = prefix
        # XREAD's reply taken as RESP gives it, parsed by entries_of_reply: redis-py's own
        # callback builds each entry's field dict in Python, once per entry read.
        client.set_response_callback("XREAD", _raw_reply)
        self._keys: dict[str, str] = {}  # channel -> stream key
        self._channels: dict[bytes, str | None] = {}  # stream key -> channel

    async def discover(self) -> list[str]:
        async def scan() -> list[str]:
            found = set()
            pattern = f"{self.prefix}{{*}}"
            async for key in self.client.scan_iter(match=pattern, count=1000, _type="stream"):
                channel = channel_of_key(self.prefix, key.decode())
                if channel is not None:
                    found.add(channel)
            return sorted(found)

        return await guard(scan)

    async def epochs(self, channels: Sequence[str]) -> dict[str, str | None]:
        async def fetch() -> dict[str, str | None]:
            pipe = self.client.pipeline(transaction=False)
            for channel in channels:
                pipe.hget(meta_key(self.prefix, channel), "epoch")
            values = await pipe.execute()
            return {
                channel: raw.decode() if raw is not None else None
                for channel, raw in zip(channels, values, strict=True)
            }

        return await guard(fetch)

    async def snapshot(self, channel: str) -> Snapshot | None:
        fields = await guard(lambda: self.client.hgetall(snapshot_key(self.prefix, channel)))
        return snapshot_from_fields(fields)

    async def entries_from(self, channel: str, start: str, count: int) -> list[StreamEntry]:
        key = stream_key(self.prefix, channel)
        raw = await guard(lambda: self.client.xrange(key, min=start, max="+", count=count))
        return entries_of(raw)

    async def last_entries(self, channel: str, count: int) -> list[StreamEntry]:
        if count <= 0:
            return []
        key = stream_key(self.prefix, channel)
        raw = await guard(lambda: self.client.xrevrange(key, max="+", min="-", count=count))
        return entries_of(raw)[::-1]

    async def read(
        self, positions: Mapping[str, str], block_ms: int, count: int
    ) -> list[tuple[str, list[StreamEntry]]]:
        keys = self._keys
        streams = {}
        for ch, last in positions.items():
            key = keys.get(ch)
            if key is None:
                key = keys[ch] = stream_key(self.prefix, ch)
            streams[key] = last
        raw = await guard(lambda: self.client.xread(streams, count=count, block=block_ms))
        if not raw:
            return []
        result = []
        channels = self._channels
        for key, entries in raw:
            if key in channels:
                channel = channels[key]
            else:
                channel = channels[key] = channel_of_key(self.prefix, key.decode())
            if channel is not None:
                result.append((channel, entries_of_reply(entries)))
        return result

    async def ping(self) -> None:
        await guard(self.client.ping)

    async def close(self) -> None:
        await self.client.aclose()


def open_source(url: str, prefix: str, *, read_timeout: float, poll_ms: int = 5) -> RedisSource:
    """The source for a URL: ``redis://``/``rediss://``/``unix://``, or a Redis Cluster
    with ``redis+cluster://`` (any node of it; the others are discovered)."""
    from relay.source.cluster import RedisClusterSource, connect_cluster, is_cluster_url

    if is_cluster_url(url):
        return RedisClusterSource(connect_cluster(url, read_timeout=read_timeout), prefix, poll_ms)
    return RedisSource(connect(url, read_timeout=read_timeout), prefix)
