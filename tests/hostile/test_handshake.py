"""Slow or silent handshakes, and connections that never subscribe (docs/limits.md).

A socket that does not finish its request head within RELAY_HANDSHAKE_TIMEOUT is closed
(not after aiohttp's 75 s keep-alive default); a WebSocket without a subscription after
RELAY_SUBSCRIBE_TIMEOUT is closed 1008. The control client does not notice either.
"""

from __future__ import annotations

import asyncio
import time

from support.rawws import RawClient, open_socket, upgrade_request

from .harness import BOOK, poll, stage

HANDSHAKE = 0.5


async def _closed_by_peer(reader: asyncio.StreamReader, timeout: float) -> float:
    """The monotonic time the relay closed the socket (EOF or reset); fails after
    ``timeout``."""
    async with asyncio.timeout(timeout):
        try:
            while await reader.read(1024):
                pass
        except ConnectionError:
            pass
    return time.monotonic()


async def test_a_silent_connection_is_closed_after_the_handshake_timeout() -> None:
    async with stage(handshake_timeout=HANDSHAKE) as s:
        opened = time.monotonic()  # before any connect: the relay's timers start later
        sockets = [await open_socket(s.host, s.port) for _ in range(5)]
        closed = await asyncio.gather(*(_closed_by_peer(r, 10) for r, _ in sockets))
        for _, writer in sockets:
            writer.close()
        # the timer, not something else, closed them: never before the timeout
        assert min(closed) - opened >= HANDSHAKE - 0.01  # (the loop clock counts in ms)
        await s.assert_control_healthy()


async def test_a_slowloris_sending_its_head_byte_by_byte_is_cut_off() -> None:
    async with stage(handshake_timeout=HANDSHAKE) as s:
        reader, writer = await open_socket(s.host, s.port)
        head = upgrade_request(s.host, s.port)
        started = time.monotonic()
        sent = 0
        closed = asyncio.create_task(_closed_by_peer(reader, 10))
        try:
            # One byte each 20 ms: the whole head would take several seconds.
            while not closed.done() and sent < len(head):
                writer.write(head[sent : sent + 1])
                sent += 1
                await asyncio.sleep(0.02)
            await closed
        finally:
            writer.close()
        assert sent < len(head)  # closed before the head was complete
        assert time.monotonic() - started < 5
        await s.assert_control_healthy()


async def test_a_head_sent_in_time_is_served_however_slowly_it_came() -> None:
    async with stage(handshake_timeout=2.0) as s:
        reader, writer = await open_socket(s.host, s.port)
        head = upgrade_request(s.host, s.port)
        for start in range(0, len(head), 40):
            writer.write(head[start : start + 40])
            await asyncio.sleep(0.05)
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        client = RawClient(reader, writer)
        await client.send_text('{"op": "subscribe", "channel": "book.BTC-USD", "id": 1}')
        assert b'"subscribed"' in (await client.read_frame()).payload
        # past the handshake timeout, the upgraded connection stays
        await asyncio.sleep(2.5)
        await client.send_text('{"op": "ping", "id": 2}')
        async with asyncio.timeout(5):
            while b'"pong"' not in (await client.read_frame()).payload:
                pass
        client.close()
        await s.assert_control_healthy()


async def test_a_websocket_that_never_subscribes_is_closed_1008() -> None:
    async with stage(subscribe_timeout=1.0) as s:
        idle = await RawClient.connect(s.host, s.port)
        await idle.send_text('{"op": "ping", "id": 1}')  # talking is not subscribing
        async with asyncio.timeout(10):
            close = await idle.read_until_close()
        idle.close()
        assert close.close_code == 1008
        assert close.payload[2:] == b"no subscription within 1 s"
        assert s.metric("relay_policy_closes_total", {"reason": "no_subscription"}) == 1
        # the control client subscribed long ago and outlived the timeout
        await poll(lambda: len(s.relay.relay.connections) == 1)
        await s.assert_control_healthy()
        assert s.control.views[BOOK].snapshots == 1


async def test_a_subscribed_websocket_is_not_closed_by_the_subscribe_timeout() -> None:
    async with stage(subscribe_timeout=1.0) as s:
        client = await RawClient.connect(s.host, s.port)
        await client.send_text('{"op": "subscribe", "channel": "book.BTC-USD", "id": 1}')
        await asyncio.sleep(1.5)
        seen = 0
        async with asyncio.timeout(10):
            while seen < 50:  # updates keep coming: it was not closed
                frame = await client.read_frame()
                assert frame.opcode == 1, frame
                seen += 1
        client.close()
        assert s.metric("relay_policy_closes_total", {"reason": "no_subscription"}) == 0
        await s.assert_control_healthy()
