"""The page's whole stack in one process: the simulator writing to Redis, and a relay app
with the page routes, which can be stopped and started again on the same port."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web
from support.relay import FAST, redis_source

from relay.config import ServeConfig, from_env
from relay.producer import RedisPublisher, Simulator
from relay.redisproc import free_port
from relay.server import build_app
from relay.web import add_page_routes


@dataclass
class Stack:
    redis_url: str
    simulator: Simulator
    config: ServeConfig
    runner: web.AppRunner | None = None
    sim_task: asyncio.Task[None] | None = None
    starts: int = 0
    _pending: list[asyncio.Task[Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.config.port}/"

    async def start_relay(self) -> None:
        app = build_app(self.config, redis_source(self.redis_url))
        add_page_routes(app)  # a no-op where build_app serves the page already
        runner = web.AppRunner(app, shutdown_timeout=5.0, access_log=None)
        await runner.setup()
        # The same port every time: the page must come back to it by itself.
        await web.TCPSite(runner, self.config.host, self.config.port).start()
        self.runner = runner
        self.starts += 1

    async def stop_relay(self) -> None:
        """Like SIGTERM: clients get 1001, then the relay is gone."""
        runner, self.runner = self.runner, None
        if runner is not None:
            await runner.cleanup()

    def resume_simulator(self) -> None:
        if self.sim_task is None or self.sim_task.done():
            self.sim_task = asyncio.create_task(self.simulator.run(), name="sim")

    async def pause_simulator(self) -> None:
        task, self.sim_task = self.sim_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@contextlib.asynccontextmanager
async def page_stack(redis_url: str, **overrides: Any) -> AsyncIterator[Stack]:
    publisher = RedisPublisher(aioredis.Redis.from_url(redis_url))
    simulator = Simulator(publisher, seed=7)  # the defaults of `relay demo`: 3 symbols, 20/s
    await simulator.start()
    config = from_env({}, host="127.0.0.1", port=free_port(), **{**FAST, **overrides})
    stack = Stack(redis_url, simulator, config)
    stack.resume_simulator()
    try:
        await stack.start_relay()
        yield stack
    finally:
        await stack.pause_simulator()
        await stack.stop_relay()
        await publisher.close()
