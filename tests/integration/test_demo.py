"""`relay demo`, the README's run command: it works with a private redis-server and,
where there is none, on the in-memory source; it cleans up after itself."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support.client import connect

from relay.redisproc import available, free_port
from relay.tail import tail


async def _run_demo(env_path: str) -> tuple[str, int]:
    port = free_port()
    env = {**os.environ, "PATH": env_path, "RELAY_REDIS_URL": "redis://127.0.0.1:1/0"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "relay.cli",
            "demo",
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--rate",
            "50",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        banner = await asyncio.to_thread(proc.stdout.readline)
        async with asyncio.timeout(15):
            while True:
                try:
                    async with connect(f"http://127.0.0.1:{port}/ws") as feed:
                        await feed.subscribe("book.BTC-USD", request_id=1)
                        assert (await feed.reply())["type"] == "subscribed"
                        first = await feed.receive()
                        assert first["type"] == "snapshot"
                        view = await feed.until("book.BTC-USD", first["seq"] + 10)
                        assert view.gaps == []
                        break
                except OSError:
                    await asyncio.sleep(0.1)
        assert await tail(f"ws://127.0.0.1:{port}/ws", ["book.BTC-USD", "trades.BTC-USD"], 20) == 0
        proc.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(proc.wait, 15) == 0
        return banner, port
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.skipif(not available(), reason="needs redis-server on PATH")
async def test_demo_starts_a_private_redis_and_stops_it() -> None:
    banner, _ = await _run_demo(os.environ["PATH"])
    match = re.search(r"private redis-server at redis://127\.0\.0\.1:(\d+)/0", banner)
    assert match, banner
    with pytest.raises(ConnectionRefusedError):  # stopped on exit
        await asyncio.open_connection("127.0.0.1", int(match[1]))


async def test_demo_without_any_redis_runs_on_the_memory_source(tmp_path: Path) -> None:
    banner, _ = await _run_demo(str(tmp_path))  # a PATH with no redis-server on it
    assert "in-memory source" in banner
