"""Run a relay app in-process on a free port, against any source."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from opentelemetry.trace import TracerProvider

from relay.config import ServeConfig, from_env
from relay.limits import runner_options
from relay.redisproc import free_port
from relay.server import RELAY, Relay, build_app
from relay.source.base import Source
from relay.source.redis import RedisSource, connect

FAST = {"read_block_ms": 100, "discovery_interval": 0.2, "backoff_base": 0.05, "backoff_max": 0.5}


@dataclass
class RunningRelay:
    app: web.Application
    config: ServeConfig

    @property
    def relay(self) -> Relay:
        return self.app[RELAY]

    @property
    def ws_url(self) -> str:
        return f"http://127.0.0.1:{self.config.port}/ws"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.config.port}"

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.relay.metrics.registry.get_sample_value(name, labels or {})
        return value or 0.0

    async def wait_live(self, *channels: str, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not all(
                name in self.relay.hub.channels and self.relay.hub.channels[name].live
                for name in channels
            ):
                await asyncio.sleep(0.02)


def redis_source(url: str, prefix: str = "md:") -> RedisSource:
    return RedisSource(connect(url, read_timeout=3.0), prefix)


@contextlib.asynccontextmanager
async def running_relay(
    source: Source, tracer_provider: TracerProvider | None = None, **overrides: Any
) -> AsyncIterator[RunningRelay]:
    """A relay app on a free port; ``tracer_provider`` None: tracing as the environment
    says, which in tests is off."""
    config = from_env({}, **{"host": "127.0.0.1", "port": free_port(), **FAST, **overrides})
    app = build_app(config, source, tracer_provider=tracer_provider)
    runner = web.AppRunner(app, shutdown_timeout=5.0, **runner_options(config))
    await runner.setup()
    await web.TCPSite(runner, config.host, config.port).start()
    try:
        yield RunningRelay(app, config)
    finally:
        await runner.cleanup()


async def wait_ready(port: int, timeout: float = 20.0) -> None:
    """Until a relay process on ``port`` answers /readyz with 200."""
    async with aiohttp.ClientSession() as session, asyncio.timeout(timeout):
        while True:
            try:
                async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)


async def stop_producing(task: asyncio.Task[None], stop: asyncio.Event) -> None:
    """End a ``Simulator.run(stop=...)`` task between two writes, cancelling only as a
    last resort (a cancellation during a Redis outage can be lost inside redis-py)."""
    stop.set()
    await asyncio.wait({task}, timeout=20)
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
