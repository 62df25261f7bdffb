"""Shared by the observability tests: a relay run in-process with a chosen tracer
provider, a scrape of its /metrics, and a simulator feeding it from the in-memory store."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web
from opentelemetry.trace import TracerProvider
from support.relay import FAST, RunningRelay

from relay.config import from_env
from relay.redisproc import free_port
from relay.server import build_app
from relay.source.base import Source


@contextlib.asynccontextmanager
async def relay_with(
    source: Source, tracer_provider: TracerProvider | None = None, **overrides: Any
) -> AsyncIterator[RunningRelay]:
    """Like support.relay.running_relay, with a tracer provider (None: tracing as the
    environment says, which in tests is off)."""
    config = from_env({}, **{"host": "127.0.0.1", "port": free_port(), **FAST, **overrides})
    app = build_app(config, source, tracer_provider=tracer_provider)
    runner = web.AppRunner(app, shutdown_timeout=5.0)
    await runner.setup()
    await web.TCPSite(runner, config.host, config.port).start()
    try:
        yield RunningRelay(app, config)
    finally:
        await runner.cleanup()


async def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as resp:
        return resp.status, await resp.text()
