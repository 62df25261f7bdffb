"""`relay serve --workers N`: N processes on one port, a crashed worker restarted, SIGTERM
forwarded for an orderly shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import redis.asyncio as aioredis
from support.client import connect
from support.relay import wait_ready

from relay.producer import RedisPublisher, Simulator
from relay.redisproc import free_port


def _children(pid: int) -> set[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return {int(child) for child in text.split()}


def _alive(pid: int) -> bool:
    """Running, not just a zombie waiting for init to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def test_two_workers_share_the_port_survive_a_crash_and_stop_on_sigterm(
    redis_url: str,
) -> None:
    publisher = RedisPublisher(aioredis.Redis.from_url(redis_url))
    sim = Simulator(publisher, symbols=1, seed=23)
    await sim.start()
    port = free_port()
    env = {**os.environ, "RELAY_REDIS_URL": redis_url, "RELAY_SHUTDOWN_TIMEOUT": "5"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "relay.cli",
            "serve",
            "--workers",
            "2",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
    )
    try:
        await wait_ready(port)
        async with asyncio.timeout(10):
            while len(_children(proc.pid)) < 2:
                await asyncio.sleep(0.05)
        first = _children(proc.pid)
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        async with asyncio.timeout(15):  # the supervisor starts a new worker in its place
            while True:
                now = _children(proc.pid)
                if len(now) == 2 and victim not in now:
                    break
                await asyncio.sleep(0.05)
        await wait_ready(port)
        # Every connection is served, whichever worker the kernel gives it to.
        for n in range(6):
            async with connect(f"http://127.0.0.1:{port}/ws") as feed:
                await feed.subscribe("book.BTC-USD", request_id=n)
                assert (await feed.reply())["type"] == "subscribed"
                assert (await feed.receive())["type"] == "snapshot"
        workers = _children(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 15) == 0
        assert not [pid for pid in workers if _alive(pid)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        await publisher.close()
