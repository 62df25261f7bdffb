"""``relay demo``: a simulator and a relay in one process, on whatever source is at hand.

Redis at the configured URL if it answers; else a private redis-server from PATH on a
free port (no persistence), stopped on exit; else the in-memory store, said out loud.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import redis.asyncio as aioredis

from relay import redisproc
from relay.config import ServeConfig
from relay.producer import MemoryPublisher, Publisher, Simulator, redis_publisher
from relay.server import build_app, serve
from relay.source.base import Source
from relay.source.memory import MemorySource, MemoryStore
from relay.source.redis import open_source

log = logging.getLogger("relay.demo")


@dataclass(frozen=True, slots=True)
class SimOptions:
    symbols: int
    rate: float
    snapshot_every: int
    depth: int
    maxlen: int


async def _reachable(url: str) -> bool:
    # One node answering is enough to tell a cluster is there.
    plain = url.replace("+cluster", "", 1)
    client = aioredis.Redis.from_url(plain, socket_connect_timeout=1.0, socket_timeout=1.0)
    try:
        return bool(await client.ping())
    except (OSError, aioredis.RedisError):
        return False
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def _pick_source(
    config: ServeConfig, maxlen: int
) -> AsyncIterator[tuple[str, Source, Publisher]]:
    url = config.redis_url
    private: redisproc.RedisProcess | None = None
    if not await _reachable(url) and redisproc.available():
        private = redisproc.RedisProcess()
        await asyncio.to_thread(private.start)
        url = private.url
    try:
        if private is not None or await _reachable(url):
            where = f"private redis-server at {url}" if private else f"Redis at {url}"
            reader = open_source(
                url,
                config.key_prefix,
                read_timeout=config.read_block_ms / 1000 + 5,
                poll_ms=config.cluster_poll_ms,
            )
            writer = redis_publisher(url, config.key_prefix, maxlen)
            yield where, reader, writer
            await writer.close()
        else:
            store = MemoryStore()
            where = "the in-memory source (no Redis reachable and no redis-server on PATH)"
            yield (
                where,
                MemorySource(store, config.key_prefix),
                MemoryPublisher(store, config.key_prefix, maxlen),
            )
    finally:
        if private is not None:
            await asyncio.to_thread(private.cleanup)


async def run_demo(config: ServeConfig, options: SimOptions) -> None:
    async with _pick_source(config, options.maxlen) as (where, source, publisher):
        simulator = Simulator(
            publisher,
            symbols=options.symbols,
            rate=options.rate,
            snapshot_every=options.snapshot_every,
            depth=options.depth,
        )
        await simulator.start()
        sim_task = asyncio.create_task(simulator.run(), name="relay-demo-simulator")
        host = "127.0.0.1" if config.host in {"0.0.0.0", "::"} else config.host
        channels = ", ".join(simulator.channels())
        print(
            f"relay demo: simulator writing {channels} to {where}\n"
            f"relay demo: connect to ws://{host}:{config.port}/ws  "
            f"(channel list: http://{host}:{config.port}/channels); Ctrl-C stops\n"
            f"relay demo: live book page: http://{host}:{config.port}/\n"
            f'relay demo: try  {{"op":"subscribe","channel":"book.BTC-USD","id":1}}',
            flush=True,
        )
        try:
            await serve(build_app(config, source), config.host, config.port)
        finally:
            sim_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sim_task
