"""Test session setup: uvloop for every async test, and a private redis-server.

The redis-server is started by the test session on a free loopback port with no
persistence, so tests are isolated from any Redis the machine runs, and run on a laptop
that has redis-server installed. Tests that stop or restart Redis start their own.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import redis.asyncio as aioredis
import uvloop

from relay.redisproc import RedisProcess, available


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> Mapping[str, Any]:
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    if not available():
        pytest.fail("redis-server is not on PATH: install it (apt-get install redis-server)")
    with RedisProcess() as server:
        yield server


@pytest.fixture
async def redis_url(redis_server: RedisProcess) -> str:
    """The session's redis-server, emptied for this test."""
    client = aioredis.Redis.from_url(redis_server.url)
    await client.flushall()
    await client.aclose()
    return redis_server.url
