"""Shared by the observability tests: a relay run in-process with a chosen tracer
provider, a scrape of its /metrics, and a simulator feeding it from the in-memory store."""

from __future__ import annotations

import contextlib
from typing import Any

import aiohttp
from opentelemetry.trace import TracerProvider
from support.relay import RunningRelay, running_relay

from relay.source.base import Source


def relay_with(
    source: Source, tracer_provider: TracerProvider | None = None, **overrides: Any
) -> contextlib.AbstractAsyncContextManager[RunningRelay]:
    return running_relay(source, tracer_provider, **overrides)


async def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as resp:
        return resp.status, await resp.text()
