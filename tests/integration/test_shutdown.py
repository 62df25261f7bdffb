"""SIGTERM: readiness fails, no new upgrades, every client gets 1001, the process exits
cleanly within the shutdown timeout. Runs the real `relay serve` process."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest
import redis.asyncio as aioredis
from support.client import connect
from support.relay import wait_ready

from relay.producer import RedisPublisher, Simulator
from relay.redisproc import free_port


@pytest.fixture
async def relay_process(redis_url: str) -> AsyncIterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    env = {
        **os.environ,
        "RELAY_REDIS_URL": redis_url,
        "RELAY_SHUTDOWN_TIMEOUT": "5",
        "RELAY_READ_BLOCK_MS": "200",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay.cli", "serve", "--port", str(port), "--host", "127.0.0.1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


async def test_sigterm_closes_every_client_with_1001_and_exits(
    redis_url: str, relay_process: tuple[subprocess.Popen[bytes], int]
) -> None:
    proc, port = relay_process
    publisher = RedisPublisher(aioredis.Redis.from_url(redis_url))
    sim = Simulator(publisher, symbols=2, seed=9)
    await sim.start()
    await wait_ready(port)
    url = f"http://127.0.0.1:{port}/ws"
    async with connect(url) as a, connect(url) as b, connect(url) as c:
        for feed in (a, b, c):
            await feed.subscribe("book.BTC-USD", request_id=1)
            assert (await feed.reply())["type"] == "subscribed"
        proc.send_signal(signal.SIGTERM)
        for feed in (a, b, c):
            async with asyncio.timeout(5):
                while True:
                    message = await feed.ws.receive()
                    if message.type is not aiohttp.WSMsgType.TEXT:
                        break
            assert message.type is aiohttp.WSMsgType.CLOSE
            assert message.data == 1001
            hint = re.fullmatch(r"relay shutting down; reconnect_in_ms=(\d+)", message.extra or "")
            assert hint, message.extra
            assert 0 <= int(hint[1]) <= 5000  # RELAY_RECONNECT_WINDOW's default, 5 s
        # No new connection gets in any more.
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientError):
                async with session.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=1)):
                    pass
    returncode = await asyncio.to_thread(proc.wait, 10)
    output = proc.stdout.read().decode() if proc.stdout else ""
    assert returncode == 0, output
    assert '"event":"stopped"' in output
    await publisher.close()
