"""The conformance tests' /echo route: only with RELAY_TEST_ECHO, and with /ws's limits
(the same upgrade code), so what Autobahn passes on /echo holds for /ws. Needs no wstest."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
from support.relay import RunningRelay, running_relay

from relay.config import from_env
from relay.source.memory import MemorySource, MemoryStore

LIMIT = 200  # RELAY_MAX_FRAME_BYTES for these tests


def _ws(url: str) -> str:
    return url.replace("http://", "ws://")


def test_the_flag_is_off_by_default_and_read_from_the_environment() -> None:
    assert from_env({}).test_echo is False
    assert from_env({"RELAY_TEST_ECHO": "1"}).test_echo is True


async def test_without_the_flag_echo_answers_404() -> None:
    async with running_relay(MemorySource(MemoryStore())) as running, aiohttp.ClientSession() as s:
        async with s.get(f"{running.http_url}/echo") as response:
            assert response.status == 404
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await s.ws_connect(_ws(f"{running.http_url}/echo"))
        assert refused.value.status == 404
        async with s.ws_connect(_ws(running.ws_url)) as ws:  # the relay itself is up
            await ws.send_str('{"op": "ping", "id": 1}')
            assert await ws.receive_json(timeout=5) == {"type": "pong", "id": 1}


def _ping_of(size: int) -> str:
    """A valid ping request of exactly ``size`` bytes (JSON, padded by an ignored field)."""
    head = '{"op": "ping", "id": 1, "pad": "'
    frame = head + "x" * (size - len(head) - 2) + '"}'
    assert len(frame.encode()) == size
    return frame


async def _closed_with(ws: aiohttp.ClientWebSocketResponse) -> int | None:
    message = await ws.receive(timeout=5)
    assert message.type is aiohttp.WSMsgType.CLOSE, message
    return ws.close_code


@pytest.fixture
async def echo_relay() -> AsyncIterator[RunningRelay]:
    async with running_relay(
        MemorySource(MemoryStore()), test_echo=True, max_frame_bytes=LIMIT
    ) as running:
        yield running


async def test_echo_sends_text_and_binary_back(echo_relay: RunningRelay) -> None:
    async with aiohttp.ClientSession() as s, s.ws_connect(_ws(f"{echo_relay.http_url}/echo")) as ws:
        await ws.send_str("héllo")
        assert await ws.receive_str(timeout=5) == "héllo"
        await ws.send_bytes(b"\x00\xff")
        assert await ws.receive_bytes(timeout=5) == b"\x00\xff"
        await ws.send_str("")
        assert await ws.receive_str(timeout=5) == ""
        assert ws.protocol is None
        # Compression is off on both routes: no permessage-deflate was negotiated.
        assert ws.compress == 0


async def test_echo_and_ws_share_the_frame_limit(echo_relay: RunningRelay) -> None:
    """RELAY_MAX_FRAME_BYTES bytes are accepted on both routes; one more closes with 1009."""
    echo_url = _ws(f"{echo_relay.http_url}/echo")
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(echo_url) as ws:
            await ws.send_str("y" * LIMIT)
            assert await ws.receive_str(timeout=5) == "y" * LIMIT
            await ws.send_str("y" * (LIMIT + 1))
            assert await _closed_with(ws) == 1009
        async with s.ws_connect(_ws(echo_relay.ws_url)) as ws:
            await ws.send_str(_ping_of(LIMIT))
            assert orjson.loads(await ws.receive_str(timeout=5)) == {"type": "pong", "id": 1}
            await ws.send_str(_ping_of(LIMIT + 1))
            assert await _closed_with(ws) == 1009
